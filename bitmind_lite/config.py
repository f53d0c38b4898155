"""Typed configuration, one model per node kind, filled from flags, environment and `.env` files.

Sections become subnet-style flags: `MinerConfig.neuron.device` is `--neuron.device` on the command line and
`NEURON_DEVICE` in the environment or a `.env` file; top-level fields are `--netuid` / `NETUID`.
Precedence: command line > environment > `.env` file > defaults. A bad value exits with status 2 and a message naming
where it came from: the flag, the environment variable, or the line of the `.env` file. bittensor's
`--logging.debug` / `--logging.trace` / `--logging.info` are accepted as `--logging.level`.
`describe_sources` is the start-up line that says which `.env` file was read (or looked for) and where the settings
that decide the network, the keys and the address came from, so running on defaults is never silent.
"""
from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Type, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

Device = Literal["auto", "cpu", "cuda"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SubtensorConfig(Section):
    network: str = Field("finney", description="finney | test | local | ws(s)://URL | devnet:PATH")


class WalletConfig(Section):
    name: str = Field("default", description="wallet (coldkey) name")
    hotkey: str = Field("default", description="hotkey name; nodes need only the hotkey")
    path: str = Field("~/.bittensor/wallets", description="wallets folder")


class LoggingConfig(Section):
    level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"] = Field(
        "INFO", description="any case; --logging.debug / --logging.trace / --logging.info also set it")
    logging_dir: Optional[str] = Field(None, description="also write rotating log files here")

    @field_validator("level", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


@dataclass(frozen=True)
class Sources:
    """Where a loaded configuration came from (set by `load_config`, reported by `describe_sources`)."""

    env_file: Optional[Path] = None  # the .env file that was read
    looked_for: Optional[Path] = None  # the default .env file, when it was not there
    origins: dict[str, str] = dataclass_field(default_factory=dict)  # dotted name -> flag, env var or file line


class NodeConfig(Section):
    """What every node has: which subnet, which chain, which keys, where logs go."""

    netuid: int = Field(1, ge=0, le=65535, description="subnet uid")
    subtensor: SubtensorConfig = SubtensorConfig()
    wallet: WalletConfig = WalletConfig()
    logging: LoggingConfig = LoggingConfig()
    _sources: Sources = PrivateAttr(default_factory=Sources)


# ---- miner (bitmind_lite/miner) ----
class MinerNeuronConfig(Section):
    detector: str = Field("npr", description="registered detector name (bitmind-lite detectors)")
    weights: Optional[str] = Field(None, description="checkpoint path; default: the bundled weights/<detector>.pth")
    device: Device = "auto"
    runtime: str = Field("eager", description="inference runtime (eager, channels_last, ...)")
    input_size: int = Field(256, ge=32, le=4096, description="square crop the detector sees (native pixels)")
    threads: int = Field(0, ge=0, description="torch CPU threads (0 = torch's default)")
    max_batch_size: int = Field(16, ge=1, le=256, description="largest batch the batcher forms")
    max_wait_ms: float = Field(0.0, ge=0, le=1000,
                               description="extra wait to fill a batch (0 = batch whatever queued while the model ran)")
    queue_size: int = Field(64, ge=1, description="pending requests before new ones get 503")
    request_timeout: float = Field(10.0, gt=0, description="longest a request waits for its answer; the caller's X-Bitmind-Timeout header is capped by it; then 504")
    sync_interval: float = Field(60.0, gt=0, description="seconds between background metagraph refreshes")
    watch_weights: bool = Field(True, description="hot-swap the weights file when it changes")
    watch_interval: float = Field(5.0, gt=0, description="seconds between checks of the weights file")
    openapi: bool = Field(False, description="serve the API schema and docs (/openapi.json, /docs, /redoc) on the "
                                             "public port")
    metrics_address: str = Field("", description="HOST:PORT to serve Prometheus /metrics on instead of the public "
                                                 "port (e.g. 127.0.0.1:9100; the public port then answers 404); empty: "
                                                 "on the public port")

    @field_validator("metrics_address")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        if value:
            host, _, port = value.rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:9100), got {value!r}")
        return value


class AxonConfig(Section):
    ip: str = Field("0.0.0.0", description="address to bind")
    port: int = Field(8091, ge=1, le=65535)
    external_ip: Optional[str] = Field(None, description="address published on chain (default: skip publishing)")
    external_port: Optional[int] = Field(None, ge=1, le=65535, description="port published on chain (default: port)")
    shutdown_timeout: float = Field(5.0, ge=0, description="seconds in-flight requests get to finish on SIGTERM")


class BlacklistConfig(Section):
    allow_non_registered: bool = Field(False, description="accept callers not in the metagraph (testing only)")
    force_validator_permit: bool = Field(True, description="require a validator permit")
    min_stake: float = Field(0.0, ge=0, description="minimum caller stake (subnet alpha)")
    rate_limit: int = Field(120, ge=1, description="requests per caller per minute before 429")


class MinerConfig(NodeConfig):
    """Miner: serves the detector behind a signed HTTP endpoint."""

    neuron: MinerNeuronConfig = MinerNeuronConfig()
    axon: AxonConfig = AxonConfig()
    blacklist: BlacklistConfig = BlacklistConfig()


# ---- validator (bitmind_lite/validator) ----
class ValidatorNeuronConfig(Section):
    challenge_interval: float = Field(30.0, gt=0, description="seconds between challenges")
    sample_size: int = Field(50, ge=1, description="miners queried per challenge")
    timeout: float = Field(9.0, gt=0, description="per-request timeout in seconds")
    moving_average_alpha: float = Field(0.05, gt=0, le=1, description="EMA weight of a new reward")
    epoch_length: int = Field(100, ge=1, description="blocks between weight setting")
    fake_prob: float = Field(0.5, ge=0, le=1, description="probability that a challenge is AI-generated")
    real: str = Field("bundled", description="real image source spec (bundled | dir:PATH | hf:DATASET[:SPLIT]); "
                      "on finney/test it must be a private pool (bundled photos are public: demos only)")
    allow_public_real_pool: bool = Field(False, description="serve the public bundled photos on finney/test anyway "
                                                            "(miners can look them up: not for a real network)")
    fake: str = Field("offline", description="generator family mix: offline | KIND[=W],FAMILY[=W],... "
                      "(bitmind-lite data families), or procedural[:FAM,..] | diffusers:MODEL")
    state_dir: str = Field("~/.bitmind-lite/validator", description="scores database and challenge log")
    rounds: int = Field(0, ge=0, description="stop after this many challenges (0 = run forever)")
    metrics_port: Optional[int] = Field(None, ge=1, le=65535, description="serve Prometheus /metrics here")
    metrics_ip: str = Field("127.0.0.1", description="address the /metrics server binds")
    dashboard_address: str = Field("", description="HOST:PORT of the read-only dashboard page (e.g. 127.0.0.1:8092; "
                                   "it shows challenge labels: keep it on 127.0.0.1); empty: off")
    min_valid: int = Field(5, ge=1, le=100, description="valid answers a miner needs before it earns any reward")
    sync_interval: float = Field(60.0, gt=0, description="seconds between metagraph refreshes")
    vpermit_stake_limit: float = Field(4096.0, ge=0, description="neurons with a validator permit and more stake "
                                                                 "than this are validators, never challenged")
    seed: Optional[int] = Field(None, description="seed for challenge and miner sampling (default: random)")
    cache: bool = Field(True, description="serve challenges from an on-disk pool that a background process keeps "
                                          "full, so a round never waits for a generator")
    cache_dir: Optional[str] = Field(None, description="challenge pool folder (default: STATE_DIR/challenge-cache)")
    cache_items: int = Field(256, ge=1, description="most challenges in the pool")
    cache_mb: float = Field(256.0, gt=0, description="most megabytes of challenges in the pool")
    cache_uses: int = Field(1, ge=1, description="rounds one pooled challenge may be sent to (1: never replayed)")
    cache_device: Device = Field("auto", description="device of the pool filler's generator networks")


class WandbConfig(Section):
    off: bool = Field(True, description="disable Weights & Biases logging")
    project: str = "bitmind-lite"
    entity: Optional[str] = None


class ValidatorConfig(NodeConfig):
    """Validator: challenges miners, scores them, sets weights."""

    neuron: ValidatorNeuronConfig = ValidatorNeuronConfig()
    wandb: WandbConfig = WandbConfig()


C = TypeVar("C", bound=NodeConfig)
BITTENSOR_LEVEL_FLAGS = ("trace", "debug", "info")  # `--logging.debug` etc., as bittensor's own nodes take them


def _flag_items(model: Type[BaseModel], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted name, field annotation, field info) for every leaf field, sections flattened."""
    items = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            items += _flag_items(ann, f"{prefix}{name}.")
        else:
            items.append((f"{prefix}{name}", ann, field))
    return items


def _is_bool(ann: Any) -> bool:
    return ann is bool or (get_origin(ann) is not None and bool in get_args(ann) and len(get_args(ann)) <= 2)


def _env_name(dotted: str) -> str:
    return dotted.replace(".", "_").upper()


def _set_nested(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def build_parser(model: Type[BaseModel], prog: str, description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description or model.__doc__)
    parser.add_argument("--env-file", default=None, help="read settings from this .env file")
    for dotted, ann, field in _flag_items(model):
        help_text = (field.description or "") + f" [env {_env_name(dotted)}; default {field.default!r}]"
        if _is_bool(ann):  # `--blacklist.allow_non_registered` alone means true; `... false` also works
            parser.add_argument(f"--{dotted}", dest=dotted, nargs="?", const="true", default=None,
                                metavar="true|false", help=help_text)
        else:
            parser.add_argument(f"--{dotted}", dest=dotted, default=None, help=help_text)
        if dotted == "logging.level":
            for level in BITTENSOR_LEVEL_FLAGS:
                parser.add_argument(f"--logging.{level}", dest=dotted, action="store_const", const=level.upper(),
                                    help=f"same as --logging.level {level.upper()} (bittensor's flag)")
    return parser


def _read_env_file(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def load_config(model: Type[C], argv: Optional[Sequence[str]] = None, prog: str = "bitmind-lite",
                env: Optional[dict[str, str]] = None, default_env_file: Optional[str] = None) -> C:
    """Parse flags + environment + .env into `model`. Exits with status 2 and a clear message on bad input."""
    parser = build_parser(model, prog)
    args = vars(parser.parse_args(argv))
    env = dict(os.environ if env is None else env)
    env_file, looked_for = args.pop("env_file"), None
    if env_file is None and default_env_file:
        if Path(default_env_file).is_file():
            env_file = default_env_file
        else:
            looked_for = Path(default_env_file).resolve()
    file_values: dict[str, str] = {}
    if env_file:
        if not Path(env_file).is_file():
            parser.error(f"--env-file {env_file}: no such file")
        file_values = _read_env_file(Path(env_file))
    tree: dict = {}
    origins: dict[str, str] = {}  # dotted -> the flag, environment variable or .env line that set it
    as_given: dict[str, str] = {}  # dotted -> how a bad value is quoted back, in the form the operator wrote it
    for dotted, _ann, _field in _flag_items(model):
        key = _env_name(dotted)
        if args.get(dotted) is not None:
            value, origins[dotted] = args[dotted], f"--{dotted}"
            as_given[dotted] = f"--{dotted} {value!r}"
        elif key in env:
            value, origins[dotted] = env[key], f"environment variable {key}"
            as_given[dotted] = f"environment variable {key}={value!r}"
        elif key in file_values:
            value, origins[dotted] = file_values[key], f"{key} in {Path(env_file).resolve()}"
            as_given[dotted] = f"{key}={value!r} in {Path(env_file).resolve()}"
        else:
            continue
        _set_nested(tree, dotted, value)
    try:
        cfg = model.model_validate(tree)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            dotted = ".".join(str(p) for p in err["loc"])
            lines.append(f"{as_given.get(dotted, '--' + dotted)}: {err['msg']}")
        parser.exit(2, f"{prog}: invalid configuration\n  " + "\n  ".join(lines) + "\n")
    cfg._sources = Sources(Path(env_file).resolve() if env_file else None, looked_for, origins)
    return cfg


def describe_sources(cfg: NodeConfig, keys: Sequence[str]) -> tuple[str, str]:
    """(log level, one line): the .env file read, or the one looked for, and the values of `keys` (the settings
    that say which network, keys and address a node uses) with where each came from. WARNING when no file was read
    and some of them are defaults, so a node never runs as default/default on finney without saying so."""
    src = cfg._sources
    values = ", ".join(f"{k}={_get(cfg, k)!r} ({src.origins.get(k, 'default')})" for k in keys)
    if src.env_file is not None:
        return "INFO", f"settings from flags, environment and {src.env_file}: {values}"
    if src.looked_for is not None:
        where = (f"no .env file: looked for {src.looked_for} (copy {src.looked_for.name}.example from the repository "
                 f"there, or pass --env-file PATH)")
    else:
        where = "no .env file (--env-file PATH)"
    defaults = [k for k in keys if k not in src.origins]
    return ("WARNING" if defaults else "INFO"), f"{where}; running with {values}"


def reserve_port(host: str, port: int, ip_setting: str, port_setting: str) -> socket.socket:
    """A TCP socket bound to host:port, made before anything heavy loads, so a port in use is one clear error and not
    a crash after the model and the chain. Raises ValueError naming the settings to change (dotted names)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a port in TIME_WAIT is free
    fix_port = f"--{port_setting} / {_env_name(port_setting)}"
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ValueError(f"{host}:{port} is already in use (another node, or an old one still running: "
                             f"ss -ltnp 'sport = :{port}'); stop it or choose another port with {fix_port}") from None
        if e.errno == errno.EADDRNOTAVAIL or isinstance(e, socket.gaierror):
            raise ValueError(f"cannot bind {host}:{port}: {host} is not an address of this machine; set "
                             f"--{ip_setting} / {_env_name(ip_setting)} to 0.0.0.0 (every interface) or one of its "
                             f"addresses") from None
        if e.errno == errno.EACCES:
            raise ValueError(f"cannot bind {host}:{port}: ports below 1024 need root; choose another with {fix_port}") \
                from None
        raise ValueError(f"cannot bind {host}:{port}: {e.strerror or e}") from None
    return sock


def dump_config(cfg: BaseModel) -> str:
    """One line per setting, for the start-up log (contains no secrets: keys stay in the wallet files)."""
    return "\n".join(f"  --{d} = {_get(cfg, d)!r}" for d, _a, _f in _flag_items(type(cfg)))


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


if __name__ == "__main__":  # pragma: no cover - handy: python -m bitmind_lite.config --help
    print(dump_config(load_config(NodeConfig, sys.argv[1:])))
