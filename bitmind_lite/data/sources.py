"""Spec strings -> sources. Real: see real.py. Fake:

    procedural                     all procedural families (the offline default)
    procedural:bilinear,bicubic    a subset of them
    diffusers:MODEL_ID_OR_DIR      a diffusers text-to-image pipeline (needs the [online] extra)

A fake source has `families`, `describe()`, `make(photo, box, rng, family=None) -> (image, params)` and `close()`.
"""
from __future__ import annotations

from bitmind_lite.data.photo import SourceError
from bitmind_lite.data.procedural import ProceduralSource
from bitmind_lite.data.real import RealSource, open_real_source


def open_fake_source(spec: str, **options):
    """Open a fake source; `options` go to its constructor (e.g. strength=, device=, caption_model=)."""
    if not isinstance(spec, str) or not spec:
        raise SourceError(f"fake source spec must be a non-empty string, got {spec!r}")
    if spec == "procedural" or spec.startswith("procedural:"):
        families = [f.strip() for f in spec.partition(":")[2].split(",") if f.strip()] or None
        return ProceduralSource(families, spec=spec, **options)
    if spec.startswith("diffusers:"):
        model = spec[len("diffusers:"):]
        if not model:
            raise SourceError(f"fake source {spec!r}: expected diffusers:MODEL_ID_OR_DIR")
        from bitmind_lite.data.diffusers_source import DiffusersSource  # lazy: diffusers is optional and slow to import

        return DiffusersSource(model, spec=spec, **options)
    raise SourceError(f"unknown fake source {spec!r}; use procedural[:FAMILY,...] or diffusers:MODEL_ID_OR_DIR")


__all__ = ["open_real_source", "open_fake_source", "RealSource", "SourceError"]
