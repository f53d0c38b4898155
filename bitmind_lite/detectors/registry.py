"""A small timm-style registry: detectors are plugins picked by name, never an if/else chain."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from bitmind_lite.detectors.base import Detector
# default_weights is owned by checkpoint.py; re-exported because bench/ and tests import it from here
from bitmind_lite.detectors.checkpoint import default_weights  # noqa: F401

_REGISTRY: dict[str, Callable[..., Detector]] = {}


def register_detector(name: str):
    """Decorator: `@register_detector("npr")` on a factory `(weights, device, **kw) -> Detector`."""

    def wrap(factory: Callable[..., Detector]) -> Callable[..., Detector]:
        if name in _REGISTRY:
            raise ValueError(f"detector {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return wrap


def list_detectors() -> list[str]:
    return sorted(_REGISTRY)


def create_detector(name: str = "npr", weights: str | os.PathLike | None = None, device: str = "auto", **kwargs) -> Detector:
    """Build a registered detector. `weights=None` takes the bundled checkpoint when there is one."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown detector {name!r}; registered: {', '.join(list_detectors())}")
    if weights is not None and not Path(weights).exists():  # a directory or a bad file: the loader explains
        raise FileNotFoundError(f"weights file not found: {weights}")
    return _REGISTRY[name](weights=weights, device=device, **kwargs)
