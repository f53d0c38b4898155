"""Shared test set-up: offline by default, small thread counts, a real photo fixture."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture(scope="session")
def real_photo() -> Image.Image:
    """A real photograph that ships inside scikit-image (CC0): the coffee cup, 600x400."""
    from skimage import data

    return Image.fromarray(data.coffee())


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
