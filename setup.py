"""bitmind-lite: a Bittensor subnet that finds AI-generated images (NPR detector, signed HTTP, bittensor 11)."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version = {}
exec((ROOT / "bitmind_lite" / "__init__.py").read_text().split("# -- end of version --")[0], version)

CORE = [
    # Fixed technical choices (see README): torch/torchvision come from the local wheel cache.
    "torch==2.14.1",
    "torchvision==0.29.1",
    "bittensor>=11.3,<12",  # the chain tests were written against 11.3.x
    "pillow>=10",
    "numpy>=1.26",
    "pydantic>=2,<3",
    "loguru>=0.7",
    "fastapi>=0.110",
    "uvicorn>=0.29",
    "uvloop>=0.19",  # uvicorn picks these up: they halve the miner's per-request CPU (bench/miner.py)
    "httptools>=0.6",
    "httpx>=0.27",
    # Used by the validator fan-out (4x faster than httpx here), metrics, the bundled photo pool and plots.
    "aiohttp>=3.9",
    "scikit-learn>=1.4",
    "scikit-image>=0.22",
    "matplotlib>=3.8",
    "tqdm>=4.66",
    "tensorboard>=2.15",
    "python-dotenv>=1.0",
    "prometheus-client>=0.20",
    # Runs the pretrained generator zoo (Real-CUGAN, waifu2x, SRMD, SPAN) on the CPU; see bitmind_lite/data/ncnn_zoo.py.
    "ncnn>=1.0.20240410",
]
EXTRAS = {
    "online": ["diffusers>=0.30", "transformers>=4.40", "datasets>=2.19", "safetensors>=0.4", "huggingface-hub>=0.23"],
    "fast": ["onnx>=1.16", "onnxruntime>=1.18"],
    "dev": ["pytest>=8", "pytest-timeout>=2.3", "packaging>=23"],
}

setup(
    name="bitmind-lite",
    version=version["__version__"],
    description="Bittensor subnet for AI-generated image detection with the NPR detector",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    # weights/ ships inside the wheel as bitmind_lite/weights (detectors/checkpoint.py finds it there), so an
    # installed node never runs an untrained detector; a source checkout reads the repository's weights/.
    packages=find_packages(include=["bitmind_lite", "bitmind_lite.*", "base_miner", "base_miner.*"])
    + ["bitmind_lite.weights"],
    package_dir={"bitmind_lite.weights": "weights"},
    package_data={"bitmind_lite": ["data/*.json", "validator/static/*"],
                  "bitmind_lite.weights": ["*.pth", "*.calib.json", "*.meta.json", "*.int8.onnx", "*.md", "*.png"]},
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["bitmind-lite=bitmind_lite.cli:main"]},
)
