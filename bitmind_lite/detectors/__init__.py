"""Detectors: `create_detector(name, weights=None, device="auto")` -> object with preprocess/predict/name/version."""
from bitmind_lite.detectors import plugins as _plugins  # noqa: F401  (registers the bundled detectors)
from bitmind_lite.detectors.base import Detector, TorchDetector, crop_or_tile, load_state_dict, resolve_device
from bitmind_lite.detectors.npr import NPRNet, npr_residual
from bitmind_lite.detectors.registry import create_detector, default_weights, list_detectors, register_detector

__all__ = [
    "Detector", "TorchDetector", "NPRNet", "npr_residual", "create_detector", "list_detectors", "register_detector",
    "default_weights", "crop_or_tile", "load_state_dict", "resolve_device",
]
