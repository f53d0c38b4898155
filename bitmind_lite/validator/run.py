"""Start a validator: `python neurons/validator.py [flags]` or `bitmind-lite validator [flags]` (flags: --help).

Start-up order: config -> logging (INFO to stdout, problems to stderr) -> the /metrics and dashboard ports (checked
free before anything heavy) -> hotkey -> chain (registration check) -> state (refuses a corrupt file) -> challenge
sampler (and its cache filler process) -> /metrics and the dashboard -> the challenge loop. SIGTERM/SIGINT let the
challenge in flight finish, save, and exit 0. Exit status 2 means bad settings, missing keys or an unusable state
file: restarting will not help.
"""
from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from loguru import logger

from bitmind_lite.config import ValidatorConfig, describe_sources, dump_config, load_config, reserve_port
from bitmind_lite.log import setup_logging

EXIT_CONFIG = 2
STATE_FILE = "state.db"
LOG_FILE = "challenges.jsonl"
CACHE_DIR = "challenge-cache"
# What a start-up line says about where the settings came from: which chain, which keys, where the scores live.
KEY_SETTINGS = ("subtensor.network", "netuid", "wallet.name", "wallet.hotkey", "neuron.state_dir")


def state_paths(cfg: ValidatorConfig) -> tuple[Path, Path]:
    root = Path(cfg.neuron.state_dir).expanduser()
    return root / STATE_FILE, root / LOG_FILE


def cache_dir(cfg: ValidatorConfig) -> Path:
    return Path(cfg.neuron.cache_dir or Path(cfg.neuron.state_dir) / CACHE_DIR).expanduser()


PUBLIC_NETWORKS = ("finney", "test")


def check_real_pool(cfg: ValidatorConfig) -> Optional[str]:
    """An error message when a validator on a real network would serve public photos (miners could label those by
    lookup), unless the operator says --neuron.allow_public_real_pool; None otherwise."""
    from bitmind_lite.data.real import PUBLIC_POOL_MESSAGE, public_reason

    network = cfg.subtensor.network
    if network not in PUBLIC_NETWORKS and "finney" not in network and "test.finney" not in network:
        return None  # local chains and devnets: the bundled pool is what demos and tests are for
    why = public_reason(cfg.neuron.real)
    if why is None:
        return None
    message = PUBLIC_POOL_MESSAGE.format(spec=cfg.neuron.real, why=why)
    if cfg.neuron.allow_public_real_pool:
        logger.warning(f"{message} (--neuron.allow_public_real_pool is set: serving it anyway)")
        return None
    return f"{message} Refusing to start on {network!r}; --neuron.allow_public_real_pool overrides this."


def make_sampler(cfg: ValidatorConfig):
    """A ChallengeSampler, or with --neuron.cache (the default) a CachedSampler: same interface, fed by a filler
    process; its start waits for the filler to build its sources, so a bad source spec still fails here."""
    from bitmind_lite.data import ChallengeSampler
    from bitmind_lite.data.cache import CachedSampler, SamplerSpec

    n = cfg.neuron
    if not n.cache:
        return ChallengeSampler(real=n.real, fake=n.fake, fake_prob=n.fake_prob, seed=n.seed)
    spec = SamplerSpec(real=n.real, fake=n.fake, fake_prob=n.fake_prob, seed=n.seed, device=n.cache_device)
    return CachedSampler(cache_dir(cfg), spec, max_items=n.cache_items, max_bytes=int(n.cache_mb * 2**20),
                         max_uses=n.cache_uses, log_level=cfg.logging.level, logging_dir=cfg.logging.logging_dir)


def build_validator(cfg: ValidatorConfig, keypair, chain, sampler=None, metrics=None):
    """Everything the loop needs, from config; raises StateError for an unusable state file."""
    from bitmind_lite.validator.loop import Validator
    from bitmind_lite.validator.state import StateStore
    from bitmind_lite.validator.telemetry import ChallengeLog, WandbRun

    state_path, log_path = state_paths(cfg)
    store = StateStore.open(state_path, owner=f"netuid {cfg.netuid} / {keypair.ss58_address}")
    wandb = WandbRun(not cfg.wandb.off, cfg.wandb.project, cfg.wandb.entity,
                     name=f"validator-{keypair.ss58_address[:8]}", config=cfg.model_dump())
    return Validator(cfg, chain, keypair, sampler or make_sampler(cfg), store, ChallengeLog(log_path), wandb,
                     metrics)


def check_registration(chain, hotkey: str, netuid: int) -> Optional[str]:
    """An error message when the hotkey is not registered; None when it is, or when the chain cannot say yet."""
    import bittensor as bt

    from bitmind_lite.chain import ChainUnavailable

    try:
        me = chain.metagraph().by_hotkey(hotkey)
    except ChainUnavailable as e:
        logger.warning(f"cannot check registration yet (chain unavailable): {e}")
        return None
    except bt.BittensorError as e:  # e.g. the subnet does not exist on this network
        return f"cannot read netuid {netuid}: {e}"
    if me is None:
        return f"hotkey {hotkey} is not registered on netuid {netuid}; register it first (btcli subnets register)"
    if not me.validator_permit:
        logger.warning(f"uid {me.uid} has no validator permit yet: the chain will refuse its weights until it does")
    logger.info(f"validator uid {me.uid}, stake {me.stake:g}")
    return None


def dashboard_address(cfg: ValidatorConfig) -> tuple[str, int]:
    """(host, port) of --neuron.dashboard_address; ValueError saying what is wrong with it."""
    from bitmind_lite.validator.dashboard import parse_address

    return parse_address(cfg.neuron.dashboard_address, "--neuron.dashboard_address")


async def serve(validator, cfg: ValidatorConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runners = []
    if cfg.neuron.metrics_port:
        runners.append(await validator.metrics.serve(cfg.neuron.metrics_ip, cfg.neuron.metrics_port))
    if cfg.neuron.dashboard_address:  # the same page as `bitmind-lite dashboard --dir STATE_DIR`, from this loop
        from bitmind_lite.validator import dashboard

        runners.append(await dashboard.serve(cfg.neuron.state_dir, *dashboard_address(cfg)))
        logger.info(f"dashboard on {dashboard.url(runners[-1])} (read-only)")
    try:
        done = await validator.run(rounds=cfg.neuron.rounds, stop=stop)
    finally:
        for runner in runners:
            await runner.cleanup()
    logger.info(f"validator stopped after {done} challenges (step {validator.state.step})")
    return 0


def run_validator(cfg: ValidatorConfig) -> int:
    setup_logging(cfg.logging.level, cfg.logging.logging_dir, name="validator")
    logger.info("bitmind-lite validator starting with\n" + dump_config(cfg))
    logger.log(*describe_sources(cfg, KEY_SETTINGS))
    try:  # a port in use is a setting to fix, found now rather than after the chain and data
        if cfg.neuron.metrics_port:
            reserve_port(cfg.neuron.metrics_ip, cfg.neuron.metrics_port, "neuron.metrics_ip",
                         "neuron.metrics_port").close()
        if cfg.neuron.dashboard_address:
            from bitmind_lite.validator.dashboard import warn_if_public

            host, port = dashboard_address(cfg)
            reserve_port(host, port, "neuron.dashboard_address", "neuron.dashboard_address").close()
            if warning := warn_if_public(host):
                logger.warning(warning)
    except ValueError as e:
        logger.error(str(e))
        return EXIT_CONFIG
    from bitmind_lite.chain import Chain, load_wallet
    from bitmind_lite.validator.state import StateError

    problem = check_real_pool(cfg)
    if problem:
        logger.error(problem)
        return EXIT_CONFIG
    try:
        keypair = load_wallet(cfg.wallet.name, cfg.wallet.hotkey, cfg.wallet.path).hotkey
    except Exception as e:  # noqa: BLE001 - any key problem is a configuration problem
        logger.error(f"cannot load hotkey {cfg.wallet.name}/{cfg.wallet.hotkey} from {cfg.wallet.path}: {e}")
        return EXIT_CONFIG
    try:
        chain = Chain.from_config(cfg, hotkey=keypair)
    except Exception as e:  # noqa: BLE001
        logger.error(f"cannot open chain {cfg.subtensor.network!r}: {type(e).__name__}: {e}")
        return EXIT_CONFIG
    problem = check_registration(chain, keypair.ss58_address, cfg.netuid)
    if problem:
        logger.error(problem)
        return EXIT_CONFIG
    try:
        validator = build_validator(cfg, keypair, chain)
    except StateError as e:
        logger.error(str(e))
        return EXIT_CONFIG
    except (ValueError, FileNotFoundError) as e:
        logger.error(f"cannot build the challenge sampler: {e}")
        return EXIT_CONFIG
    logger.info(f"state: step {validator.state.step}, {len(validator.state.miners)} uids, last weights at block "
                f"{validator.state.last_weights_block}")
    try:
        return asyncio.run(serve(validator, cfg))
    finally:
        validator.close()
        chain.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg = load_config(ValidatorConfig, argv, prog="validator", default_env_file=".env.validator")
    return run_validator(cfg)


if __name__ == "__main__":
    sys.exit(main())
