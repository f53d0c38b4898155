"""loguru set-up shared by every entry point."""
from __future__ import annotations

import sys
from pathlib import Path

from loguru import logger


def setup_logging(level: str = "INFO", logging_dir: str | None = None, name: str = "bitmind-lite") -> None:
    logger.remove()
    logger.add(sys.stderr, level=level, format="<green>{time:HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | {message}")
    if logging_dir:
        path = Path(logging_dir).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        logger.add(path / f"{name}.log", level=level, rotation="50 MB", retention=5, enqueue=True)
