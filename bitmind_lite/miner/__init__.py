"""The miner node: a signed HTTP endpoint (app) in front of a metagraph gate, a batcher and the detector.

`run_miner(cfg)` starts one; `create_app(service)` is the FastAPI app for a `MinerService`.
"""
from bitmind_lite.miner.app import create_app
from bitmind_lite.miner.batcher import Batcher, ModelError, Prediction, QueueFull
from bitmind_lite.miner.gate import Gate, RateLimiter, Rejection
from bitmind_lite.miner.metrics import MinerMetrics
from bitmind_lite.miner.run import main, run_miner
from bitmind_lite.miner.service import MinerService

__all__ = ["create_app", "Batcher", "ModelError", "Prediction", "QueueFull", "Gate", "RateLimiter", "Rejection",
           "MinerMetrics", "MinerService", "main", "run_miner"]
