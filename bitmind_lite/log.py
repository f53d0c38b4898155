"""loguru set-up shared by every entry point.

Nodes log INFO and below to stdout and WARNING and above to stderr: pm2 (and systemd, docker) keep the two apart, so
`pm2 logs` shows progress in the out log and problems in the error log. A CLI whose stdout is its output (`detect
--json`) passes `stdout=False` to keep every log line on stderr.
"""
from __future__ import annotations

import sys
from pathlib import Path

from loguru import logger

FORMAT = "<green>{time:HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | {message}"
WARNING = logger.level("WARNING").no


def setup_logging(level: str = "INFO", logging_dir: str | None = None, name: str = "bitmind-lite",
                  stdout: bool = True) -> None:
    level = level.upper()  # loguru's level names are upper case; `--log-level debug` should work too
    logger.remove()
    if stdout:
        logger.add(sys.stdout, level=level, format=FORMAT, filter=lambda record: record["level"].no < WARNING)
        logger.add(sys.stderr, level=max(WARNING, logger.level(level).no), format=FORMAT)
    else:
        logger.add(sys.stderr, level=level, format=FORMAT)
    if logging_dir:
        path = Path(logging_dir).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        logger.add(path / f"{name}.log", level=level, rotation="50 MB", retention=5, enqueue=True)
