"""Typed configuration, one model per node kind, filled from flags, environment and `.env` files.

Sections become subnet-style flags: `MinerConfig.neuron.device` is `--neuron.device` on the command line and
`NEURON_DEVICE` in the environment or a `.env` file; top-level fields are `--netuid` / `NETUID`.
Precedence: command line > environment > `.env` file > defaults. Bad values exit with a message naming the flag.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Type, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
    level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"] = "INFO"
    logging_dir: Optional[str] = Field(None, description="also write rotating log files here")


class NodeConfig(Section):
    """What every node has: which subnet, which chain, which keys, where logs go."""

    netuid: int = Field(1, ge=0, le=65535, description="subnet uid")
    subtensor: SubtensorConfig = SubtensorConfig()
    wallet: WalletConfig = WalletConfig()
    logging: LoggingConfig = LoggingConfig()


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
    request_timeout: float = Field(10.0, gt=0, description="seconds before a request answers 500")
    sync_interval: float = Field(60.0, gt=0, description="seconds between background metagraph refreshes")
    watch_weights: bool = Field(True, description="hot-swap the weights file when it changes")
    watch_interval: float = Field(5.0, gt=0, description="seconds between checks of the weights file")


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


C = TypeVar("C", bound=BaseModel)


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
    env_file = args.pop("env_file") or (default_env_file if default_env_file and Path(default_env_file).is_file() else None)
    file_values: dict[str, str] = {}
    if env_file:
        if not Path(env_file).is_file():
            parser.error(f"--env-file {env_file}: no such file")
        file_values = _read_env_file(Path(env_file))
    tree: dict = {}
    for dotted, _ann, _field in _flag_items(model):
        key = _env_name(dotted)
        value = args.get(dotted)
        if value is None:
            value = env.get(key, file_values.get(key))
        if value is not None:
            _set_nested(tree, dotted, value)
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        lines = [f"--{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        parser.exit(2, f"{prog}: invalid configuration\n  " + "\n  ".join(lines) + "\n")


def dump_config(cfg: BaseModel) -> str:
    """One line per setting, for the start-up log (contains no secrets: keys stay in the wallet files)."""
    return "\n".join(f"  --{d} = {_get(cfg, d)!r}" for d, _a, _f in _flag_items(type(cfg)))


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


if __name__ == "__main__":  # pragma: no cover - handy: python -m bitmind_lite.config --help
    print(dump_config(load_config(NodeConfig, sys.argv[1:])))
