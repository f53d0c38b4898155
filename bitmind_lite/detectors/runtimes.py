"""Speed paths over the same weights. `eager` is the reference every other runtime is measured against.

Each runtime turns an eval-mode model into a callable `batch (Bx3xSxS float32) -> logits (B)`; `bench/npr_speed.py`
measures them and their accuracy delta against eager. Summary (see docs/training.md and weights/npr.md):

  eager          the plain module (reference)
  channels_last  NHWC layout: oneDNN convolutions skip a layout conversion per layer
  compile        torch.compile (inductor) over channels_last; first call per batch size compiles (10-30 s on CPU)
  bf16           channels_last under bf16 autocast: fast on GPUs and AVX512-BF16/AMX CPUs, emulated (slow) elsewhere
  onnx           ONNX Runtime, exported in memory when the detector is created (~2 s), so it can never go stale
                 against the weights; CPU, or CUDA when onnxruntime-gpu is installed
  onnx_int8      ONNX Runtime, int8 convolutions: the model base_miner/quantize.py calibrated on training images
                 and cached next to the weights (`weights/npr.int8.onnx`, checked against the weights' fingerprint)

`auto` resolves to the runtime `bench/npr_speed.py` found fastest on that kind of device while keeping accuracy
within 0.5 pt of eager (`resolve_runtime`, `AUTO`); miners pick it with `--neuron.runtime auto`.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import torch

from bitmind_lite.detectors.checkpoint import weights_fingerprint


class ChannelsLast(torch.nn.Module):
    """NHWC memory layout: oneDNN/cuDNN convolutions run faster on it (measured +25% on this CPU at batch 1)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


class Autocast(torch.nn.Module):
    """Run the wrapped model under autocast (bf16 by default); logits come back as float32."""

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.model, self.device_type, self.dtype = model, device.type, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(x).float()


def export_onnx(model: torch.nn.Module, input_size: int, opset: int = 17) -> bytes:
    """The model as ONNX bytes: batch is dynamic, the spatial size is fixed at `input_size` (what preprocess emits)."""
    model = model.float().cpu().eval()
    example = torch.zeros(1, 3, input_size, input_size)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but stable; dynamo export is slower
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, buf, dynamo=False, opset_version=opset, input_names=["image"],
                          output_names=["logit"], dynamic_axes={"image": {0: "batch"}, "logit": {0: "batch"}})
    return buf.getvalue()


def int8_path(weights: str | os.PathLike) -> Path:
    return Path(weights).with_suffix(".int8.onnx")


def load_int8(weights: str | os.PathLike | None, input_size: int) -> bytes:
    """The int8 model `base_miner/quantize.py` cached next to the weights, after checking it was made from them.

    Static int8 needs activation ranges measured on representative images, which a detector being created does not
    have; so quantisation is an offline step and the runtime refuses a missing or stale file.
    """
    import onnx

    hint = f"make it with: python base_miner/quantize.py --model_path {weights} --dataroot DATA/train"
    if weights is None:
        raise ValueError("runtime onnx_int8 needs a checkpoint and its .int8.onnx (base_miner/quantize.py)")
    path = int8_path(weights)
    if not path.is_file():
        raise ValueError(f"runtime onnx_int8: {path} not found; {hint}")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    expected = {"weights": weights_fingerprint(weights), "input_size": str(input_size)}
    if {k: meta.get(k) for k in expected} != expected:
        raise ValueError(f"runtime onnx_int8: {path} was made for {meta.get('weights')} at {meta.get('input_size')} px, "
                         f"not {expected['weights']} at {input_size} px; {hint} --input_size {input_size}")
    return path.read_bytes()


class OnnxRuntime(torch.nn.Module):
    """Callable like the module it replaces: torch batch in, torch logits out (on the batch's device)."""

    def __init__(self, onnx_bytes: bytes, device: torch.device, input_size: int):
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ValueError("runtime 'onnx' needs onnxruntime: pip install onnxruntime (or bitmind-lite[fast])") from e
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError("runtime 'onnx' on cuda needs onnxruntime-gpu; use runtime eager/compile/bf16 on GPUs")
            providers.insert(0, "CUDAExecutionProvider")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(onnx_bytes, opts, providers=providers)
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != (3, self.input_size, self.input_size):
            raise ValueError(f"onnx runtime was built for Bx3x{self.input_size}x{self.input_size}, got {tuple(x.shape)}")
        out = self.session.run(None, {"image": x.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


def compiled(model: torch.nn.Module, device: torch.device, input_size: int) -> torch.nn.Module:
    """torch.compile over channels_last; compiled once here for batch 1 so the first request is not the slow one."""
    model = torch.compile(ChannelsLast(model), dynamic=False)
    with torch.inference_mode():
        model(torch.zeros(1, 3, input_size, input_size, device=device))
    return model


def resolve_runtime(runtime: str, device: torch.device, weights: str | os.PathLike | None = None,
                    input_size: int | None = None) -> str:
    """`auto` -> the measured fastest accurate runtime for the device and checkpoint; other names are checked."""
    if runtime == "auto":
        for candidate in AUTO.get(device.type, ()):
            if candidate == "onnx_int8" and not _int8_ready(weights, input_size):
                continue
            if candidate.startswith("onnx"):
                try:
                    import onnxruntime  # noqa: F401
                except ImportError:
                    continue
            return candidate
        return "eager"
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of: auto, {', '.join(RUNTIMES)}")
    return runtime


def _int8_ready(weights, input_size) -> bool:
    try:
        return weights is not None and input_size is not None and bool(load_int8(weights, input_size))
    except (ValueError, ImportError):
        return False


def prepare_runtime(model: torch.nn.Module, runtime: str, device: torch.device, input_size: int,
                    weights: str | os.PathLike | None = None) -> torch.nn.Module:
    """Wrap an eval-mode model for `runtime` (`weights`: its checkpoint, for runtimes with artefacts next to it)."""
    runtime = resolve_runtime(runtime, device, weights, input_size)
    if runtime == "onnx_int8":
        return OnnxRuntime(load_int8(weights, input_size), device, input_size)
    return RUNTIMES[runtime](model, device, input_size)


RUNTIMES = {
    "eager": lambda model, device, size: model,
    "channels_last": lambda model, device, size: ChannelsLast(model),
    "compile": compiled,
    "bf16": lambda model, device, size: Autocast(ChannelsLast(model), device),
    "onnx": lambda model, device, size: OnnxRuntime(export_onnx(model, size), device, size),
    "onnx_int8": None,  # built by prepare_runtime from the cached file (see load_int8)
}

# `auto`, in order of preference, first available wins. Measured by bench/npr_speed.py (see weights/npr.md): on the
# 2-core CPU, onnx is the fastest runtime within 0.5 pt of eager; onnx_int8 is faster still but moved validation
# accuracy by 0.7-1.0 pt, so it stays opt-in. GPUs were not measured here: channels_last is the safe choice for cuDNN;
# bench `compile` and `bf16` there before changing this.
AUTO = {"cpu": ("onnx", "channels_last"), "cuda": ("channels_last",)}
