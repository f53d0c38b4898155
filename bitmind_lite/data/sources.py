"""Spec strings -> sources. Real: see real.py. Fake:

    procedural                     all procedural families (the offline default)
    procedural:bilinear,bicubic    a subset of them
    diffusers:MODEL_ID_OR_DIR      a diffusers text-to-image pipeline (needs the [online] extra)
    offline | KIND[=W],FAMILY[=W]  a weighted mix of registered generator families (families.py; the default)

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
    if ":" in spec.partition(",")[0].partition("=")[0]:
        raise SourceError(f"unknown fake source {spec!r}; use procedural[:FAMILY,...], diffusers:MODEL_ID_OR_DIR "
                          "or a family mix such as offline or pretrained=2,nearest")
    from bitmind_lite.data.families import FamilyMix

    return FamilyMix.from_spec(spec, **route_options(options))


PROCEDURAL_OPTIONS = ("strength", "match_jpeg")


def route_options(options: dict) -> dict:
    """Flat source options (strength=, device=, steps=, ...) -> per-kind options for a FamilyMix: the procedural
    knobs go to procedural families, everything else (device, steps, caption_model) to the network kinds."""
    proc = {k: v for k, v in options.items() if k in PROCEDURAL_OPTIONS}
    rest = {k: v for k, v in options.items() if k not in PROCEDURAL_OPTIONS}
    nets = {k: v for k, v in rest.items() if k == "device"}
    return {"procedural": proc, "pretrained": nets, "house": nets, "semisynthetic": nets, "online": rest}


__all__ = ["open_real_source", "open_fake_source", "RealSource", "SourceError"]
