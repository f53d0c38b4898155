"""Make the int8 ONNX model of a checkpoint for the `onnx_int8` runtime, calibrated on training images.

    python base_miner/quantize.py --model_path weights/npr.pth --dataroot datasets/npr-procedural/train

Writes weights/npr.int8.onnx next to the checkpoint, stamped with the checkpoint's fingerprint and input size;
the runtime refuses it once the weights change. Static QDQ quantisation (onnxruntime.quantization): int8
per-channel weights, uint8 activations with percentile ranges measured on `--n` images through the serving
preprocess. The first convolution (and the NPR residual before it) stays fp32: the residual is a difference of
neighbouring pixels, as small as one grey level, and 8-bit activations there would drown it in rounding noise.
Check the result with `python bench/npr_speed.py --runtimes onnx,onnx_int8` (accuracy delta vs eager).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path[0] = str(ROOT)

import numpy as np  # noqa: E402

from base_miner.data import EvalDataset, collect_samples, loader  # noqa: E402
from bitmind_lite.detectors import create_detector  # noqa: E402
from bitmind_lite.detectors.base import weights_fingerprint  # noqa: E402
from bitmind_lite.detectors.runtimes import export_onnx, int8_path  # noqa: E402


def quantize(onnx_bytes: bytes, batches: list[np.ndarray], metadata: dict[str, str]) -> bytes:
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            batch = next(self.it, None)
            return None if batch is None else {"image": batch}

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = (os.path.join(tmp, n) for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        Path(src).write_bytes(onnx_bytes)
        quant_pre_process(src, pre, skip_symbolic_shape=True)  # symbolic shape inference trips on the even-crop
        quantize_static(pre, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.Percentile, op_types_to_quantize=["Conv"],
                        nodes_to_exclude=["/conv1/Conv"])
        model = onnx.load(dst)
    onnx.helper.set_model_props(model, metadata)
    return model.SerializeToString()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="quantize.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True)
    p.add_argument("--arch", default="npr")
    p.add_argument("--dataroot", required=True, help="training images (folders with 0_real/1_fake below)")
    p.add_argument("--n", type=int, default=64, help="calibration images (a seeded random subset)")
    p.add_argument("--input_size", type=int, default=256, help="the serving size the model is built for")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.n < 1 or args.input_size < 2 or args.input_size % 2:
        p.error("--n must be >= 1 and --input_size even")
    try:
        det = create_detector(args.arch, weights=args.model_path, device="cpu", input_size=args.input_size,
                              calibrate=False)
        samples = collect_samples(args.dataroot)
        if not samples:
            raise ValueError(f"no images under {args.dataroot} (expected .../0_real|1_fake/*.png)")
        pick = np.random.default_rng(args.seed).choice(len(samples), min(args.n, len(samples)), replace=False)
        batches = [x.numpy() for x, _ in loader(EvalDataset([samples[i] for i in sorted(pick)], det.preprocess), 1)]
        meta = {"weights": weights_fingerprint(args.model_path), "input_size": str(args.input_size),
                "arch": args.arch, "calibration": f"{len(batches)} images from {args.dataroot}, percentile"}
        data = quantize(export_onnx(det.model, args.input_size), batches, meta)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"quantize.py: error: {e}", file=sys.stderr)
        return 2
    out = int8_path(args.model_path)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    print(f"wrote {out} ({len(data) / 1e6:.1f} MB, calibrated on {len(batches)} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
