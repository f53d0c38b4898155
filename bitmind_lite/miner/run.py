"""Start a miner: `python neurons/miner.py [flags]` or `bitmind-lite miner [flags]` (flags: --help).

Start-up order: config -> logging (INFO to stdout, problems to stderr) -> the port (bound now, so a port in use is an
error before anything heavy) -> hotkey -> chain -> detector (loaded once) -> first metagraph (endpoint published when
it changed) -> uvicorn on the bound socket. SIGTERM/SIGINT stop accepting connections, let in-flight requests finish
for --axon.shutdown_timeout seconds, answer what is queued, and exit 0. Exit status 2 (EXIT_CONFIG) means a setting,
the keys or the weights need fixing: pm2 leaves the app stopped (setup/ecosystem.config.js).
"""
from __future__ import annotations

import importlib.util
import signal
import sys
import time
from typing import Optional, Sequence

import torch
import uvicorn
from loguru import logger
from PIL import Image

from bitmind_lite.chain import Chain, load_wallet
from bitmind_lite.config import MinerConfig, describe_sources, dump_config, load_config, reserve_port
from bitmind_lite.detectors import create_detector
from bitmind_lite.log import setup_logging
from bitmind_lite.miner.app import create_app
from bitmind_lite.miner.service import MinerService

EXIT_CONFIG = 2  # bad settings, missing keys or weights: restarting will not help (pm2 stop_exit_codes)
# Idle keep-alive connections stay open longer than clients keep them (aiohttp: 15 s), so the client always closes
# first; a server closing at the moment a client reuses the connection is what fails requests with
# "Server disconnected" (see the transport benchmark). uvicorn's default is 5 s.
KEEP_ALIVE_S = 20
# What a start-up line says about where the settings came from: which chain, which keys, which address.
KEY_SETTINGS = ("subtensor.network", "netuid", "wallet.name", "wallet.hotkey", "axon.ip", "axon.port")


def build_detector(cfg: MinerConfig):
    """The detector from the registry, once per process. Returns (detector, load seconds)."""
    if cfg.neuron.threads:
        torch.set_num_threads(cfg.neuron.threads)
    kwargs = {"input_size": cfg.neuron.input_size}
    if cfg.neuron.runtime != "eager":  # only torch detectors take a runtime; eager is everyone's default
        kwargs["runtime"] = cfg.neuron.runtime
    start = time.perf_counter()
    detector = create_detector(cfg.neuron.detector, weights=cfg.neuron.weights, device=cfg.neuron.device, **kwargs)
    # One blank image through the whole path, so the first challenge does not pay for lazy kernel set-up.
    detector.predict_images([Image.new("RGB", (cfg.neuron.input_size, cfg.neuron.input_size))])
    return detector, time.perf_counter() - start


def _exit_cleanly(signum, frame):
    raise SystemExit(0)


def run_miner(cfg: MinerConfig) -> int:
    setup_logging(cfg.logging.level, cfg.logging.logging_dir, name="miner")
    logger.info("bitmind-lite miner starting with\n" + dump_config(cfg))
    logger.log(*describe_sources(cfg, KEY_SETTINGS))
    try:  # held from here on and handed to uvicorn: nobody can take the port while the model loads
        listener = reserve_port(cfg.axon.ip, cfg.axon.port, "axon.ip", "axon.port")
    except ValueError as e:
        logger.error(str(e))
        return EXIT_CONFIG
    try:
        return _serve(cfg, listener)
    finally:
        listener.close()


def _serve(cfg: MinerConfig, listener) -> int:
    try:
        keypair = load_wallet(cfg.wallet.name, cfg.wallet.hotkey, cfg.wallet.path).hotkey  # cached: sign/verify fast
    except Exception as e:
        logger.error(f"cannot load hotkey {cfg.wallet.name}/{cfg.wallet.hotkey} from {cfg.wallet.path}: {e}")
        return EXIT_CONFIG
    try:
        chain = Chain.from_config(cfg, hotkey=keypair)
    except Exception as e:
        logger.error(f"cannot open chain {cfg.subtensor.network!r}: {type(e).__name__}: {e}")
        return EXIT_CONFIG
    try:
        detector, load_seconds = build_detector(cfg)
    except (ValueError, FileNotFoundError) as e:  # CheckpointError is a ValueError: its message says it all
        logger.error(f"cannot load detector {cfg.neuron.detector!r}: {e}")
        return EXIT_CONFIG
    except (RuntimeError, TypeError) as e:
        logger.error(f"cannot load detector {cfg.neuron.detector!r}: {type(e).__name__}: {e}")
        return EXIT_CONFIG
    weights = getattr(detector, "weights_path", None)
    logger.info(f"serving {detector.name}/{detector.version} on {detector.device} "
                f"(weights: {weights or 'none'}; loaded in {load_seconds:.2f}s)")
    if detector.version == "untrained":
        logger.warning("no trained weights exist yet for this detector: answers are noise and will earn nothing. "
                       "Pass --neuron.weights PATH, or add weights/<detector>.pth; the file is hot-swapped if it "
                       "changes later.")

    service = MinerService(cfg, keypair.ss58_address, detector, chain)
    service.metrics.model_load.set(load_seconds)
    try:  # the first metagraph before serving; if the chain is down, the background loop keeps retrying
        service.sync(strict=True)
    except Exception as e:  # reachable but refusing, e.g. no such subnet: a setting to fix, not to retry
        logger.error(f"cannot read subnet {cfg.netuid} on {cfg.subtensor.network!r}: {type(e).__name__}: {e}")
        return EXIT_CONFIG
    if service.endpoint is None:
        logger.info("no --axon.external_ip: this miner does not publish an endpoint on chain")
    server = uvicorn.Server(uvicorn.Config(
        create_app(service), host=cfg.axon.ip, port=cfg.axon.port, log_level="warning", access_log=False,
        timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=cfg.axon.shutdown_timeout,
        server_header=False, date_header=False))
    # uvicorn handles SIGTERM/SIGINT itself, then re-raises the signal into these handlers: exit 0 after a clean stop.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    # uvicorn picks uvloop and httptools when installed: about 0.3-0.5 ms less CPU per request than asyncio + h11.
    fast = [name for name in ("uvloop", "httptools") if importlib.util.find_spec(name)]
    logger.info(f"miner {keypair.ss58_address} starting HTTP on http://{cfg.axon.ip}:{cfg.axon.port} "
                f"({' + '.join(fast) if fast else 'asyncio + h11; pip install uvloop httptools for less CPU'})")
    server.run(sockets=[listener])
    return 0 if server.started else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["stats"]:  # `bitmind-lite miner stats`: the operator's view (stats.py), nothing is served
        from bitmind_lite.miner.stats import main as stats_main
        return stats_main(argv[1:])
    cfg = load_config(MinerConfig, argv, prog="miner", default_env_file=".env.miner")
    return run_miner(cfg)


if __name__ == "__main__":
    sys.exit(main())
