"""`procedural`: the offline synthetic class. A real photo region is re-rendered the way a generator's decoder
produces pixels: 2x box down-sampling (the "latent" resolution), a 2x up-sampling layer of one family, then a small
random conv decoder residual:

    nearest | bilinear | bicubic      F.interpolate
    transposed                        stride-2 4x4 deconv, bilinear-kernel init + noise  -> checkerboard traces
    pixelshuffle                      3x3 conv to 12 channels, ICNR (nearest) init + noise, then PixelShuffle(2)

Difficulty knobs (sampled per image from ranges, scaled by `strength`): `eps` (decoder residual weight) and
`kernel_noise` (how far the learnt up-sampler is from its clean init; larger = easier to spot). The up-sampling grid
gets a random (0|1, 0|1) offset against the image, so no family is trivially aligned with NPR's 2x2 grid.
Every output records its family and parameters. Borders are rendered with a margin and replicate padding (a
zero-padded conv would draw a dark frame: a shortcut). The result is then re-encoded like its source photo
(photo.reencode_like) so both classes share one compression history.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bitmind_lite.data.photo import Photo, SourceError, ensure_min_size, pil_to_tensor, reencode_like, tensor_to_pil

FAMILIES = {  # the provider table of families.py: name -> source, description
    "nearest": {"source": "bitmind_lite.data.procedural", "description": "2x nearest up-sampling + random conv decoder"},
    "bilinear": {"source": "bitmind_lite.data.procedural", "description": "2x bilinear up-sampling + random conv decoder"},
    "bicubic": {"source": "bitmind_lite.data.procedural", "description": "2x bicubic up-sampling + random conv decoder"},
    "transposed": {"source": "bitmind_lite.data.procedural",
                   "description": "stride-2 deconv (bilinear init + noise) + random conv decoder: checkerboards"},
    "pixelshuffle": {"source": "bitmind_lite.data.procedural",
                     "description": "conv + PixelShuffle(2) (ICNR init + noise) + random conv decoder"},
}
EPS_RANGE = (0.02, 0.08)  # decoder residual weight
KERNEL_NOISE_RANGE = (0.005, 0.025)  # std of the perturbation of learnt up-samplers (transposed, pixelshuffle)
HIDDEN_CHOICES = (8, 16)  # decoder width
MARGIN = 8  # photo pixels rendered around the box so borders look like the interior


def _bilinear_deconv_weight() -> torch.Tensor:
    """conv_transpose2d weight (3, 3, 4, 4) that, with stride 2 / padding 1, is exactly bilinear 2x up-sampling."""
    k1 = torch.tensor([0.25, 0.75, 0.75, 0.25])
    w = torch.zeros(3, 3, 4, 4)
    for c in range(3):
        w[c, c] = torch.outer(k1, k1)
    return w


def _icnr_weight() -> torch.Tensor:
    """conv2d weight (12, 3, 3, 3) that, followed by pixel_shuffle(2), is nearest 2x up-sampling (ICNR init)."""
    w = torch.zeros(12, 3, 3, 3)
    for c in range(3):
        w[c * 4:(c + 1) * 4, c, 1, 1] = 1.0  # pixel_shuffle reads channel c*r^2 + (i*r + j)
    return w


BILINEAR_DECONV = _bilinear_deconv_weight()
ICNR = _icnr_weight()


def _conv_same(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), w)


def upsample(lo: torch.Tensor, family: str, g: torch.Generator, kernel_noise: float) -> torch.Tensor:
    """2x up-sampling of a 1x3xhxw tensor by one generator family."""
    if family in ("nearest", "bilinear", "bicubic"):
        kw = {} if family == "nearest" else {"align_corners": False}
        return F.interpolate(lo, scale_factor=2, mode=family, **kw)
    if family == "transposed":
        w = BILINEAR_DECONV + kernel_noise * torch.randn(3, 3, 4, 4, generator=g)
        # replicate-pad 1 low-res pixel so the deconv's border outputs see real neighbours, then drop them
        out = F.conv_transpose2d(F.pad(lo, (1, 1, 1, 1), mode="replicate"), w, stride=2, padding=1)
        return out[..., 2:-2, 2:-2]
    if family == "pixelshuffle":
        w = ICNR + kernel_noise * torch.randn(12, 3, 3, 3, generator=g)
        return F.pixel_shuffle(_conv_same(lo, w), 2)
    raise ValueError(f"unknown procedural family {family!r}; choose from {', '.join(FAMILIES)}")


def render(x: torch.Tensor, family: str, seed: int, eps: float = 0.05, kernel_noise: float = 0.015,
           hidden: int = 16, offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Re-render a 1x3xHxW image in [0, 1] through down -> up(family) -> + eps * random conv decoder.
    (channels_last: oneDNN runs these thin convs 3-5x faster that way on CPU.)

    `offset` (oy, ox) in {0,1}^2 shifts the 2x2 up-sampling grid against the image grid. Output has x's shape.
    """
    oy, ox = offset
    h, w = x.shape[-2:]
    g = torch.Generator().manual_seed(int(seed))
    with torch.inference_mode():
        xp = F.pad(x, (ox, (ox + w) % 2, oy, (oy + h) % 2), mode="replicate")
        up = upsample(F.avg_pool2d(xp, 2), family, g, kernel_noise).contiguous(memory_format=torch.channels_last)
        w1 = torch.randn(hidden, 3, 3, 3, generator=g) / 27 ** 0.5
        w2 = torch.randn(3, hidden, 3, 3, generator=g) / (9 * hidden) ** 0.5
        out = up + eps * _conv_same(F.leaky_relu(_conv_same(up, w1), 0.2), w2)
        return out[..., oy:oy + h, ox:ox + w].clamp_(0, 1)


def sample_params(rng: np.random.Generator, family: str, strength: float = 1.0) -> dict:
    """Per-image generator parameters (JSON-serialisable); `strength` < 1 makes the traces fainter (harder)."""
    return {
        "family": family,
        "kind": "procedural",
        "scale": 2,
        "down": "box",
        "eps": round(float(rng.uniform(*EPS_RANGE)) * strength, 5),
        "kernel_noise": (round(float(rng.uniform(*KERNEL_NOISE_RANGE)) * strength, 5)
                         if family in ("transposed", "pixelshuffle") else 0.0),
        "hidden": int(rng.choice(HIDDEN_CHOICES)),
        "grid_offset": [int(rng.integers(2)), int(rng.integers(2))],
        "decoder_seed": int(rng.integers(2 ** 31 - 1)),
    }


def render_image(img: Image.Image, params: dict) -> Image.Image:
    """Render a PIL image with recorded `params` (the inverse of sample_params: replays an output exactly)."""
    out = render(pil_to_tensor(img), params["family"], params["decoder_seed"], params["eps"], params["kernel_noise"],
                 params["hidden"], tuple(params["grid_offset"]))
    return tensor_to_pil(out)


class ProceduralSource:
    """Fake source `procedural[:FAMILY,FAMILY...]`: re-renders the region of a real photo it is given."""

    kind = "procedural"

    def __init__(self, families: list[str] | tuple[str, ...] | None = None, strength: float = 1.0,
                 match_jpeg: bool = True, spec: str = "procedural"):
        self.families = tuple(families or FAMILIES)
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise SourceError(f"fake source {spec!r}: unknown families {unknown}; choose from {', '.join(FAMILIES)}")
        if not strength > 0:
            raise SourceError(f"fake source {spec!r}: strength must be > 0, got {strength}")
        self.strength, self.match_jpeg, self.spec = float(strength), bool(match_jpeg), spec

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "families": list(self.families), "strength": self.strength,
                "match_source_jpeg": self.match_jpeg, "eps_range": list(EPS_RANGE),
                "kernel_noise_range": list(KERNEL_NOISE_RANGE), "hidden_choices": list(HIDDEN_CHOICES)}

    def make(self, photo: Photo, box: tuple[int, int, int, int], rng: np.random.Generator,
             family: str | None = None) -> tuple[Image.Image, dict]:
        """The fake twin of `photo` cropped at `box`: same content, generator-like pixels, same JPEG history."""
        family = family or self.families[int(rng.integers(len(self.families)))]
        params = sample_params(rng, family, self.strength)
        canvas = ensure_min_size(photo.image, box[2] - box[0])
        x0, y0 = max(box[0] - MARGIN, 0) & ~1, max(box[1] - MARGIN, 0) & ~1  # even: keeps grid_offset meaningful
        x1, y1 = min(box[2] + MARGIN, canvas.width), min(box[3] + MARGIN, canvas.height)
        region = render_image(canvas.crop((x0, y0, x1, y1)), params)
        out = region.crop((box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0))
        if self.match_jpeg:
            out, jpeg = reencode_like(out, photo, box)
            params["source_jpeg"] = jpeg
        return out, params

    def close(self) -> None:
        pass


def family_status(name: str) -> str | None:
    return None if name in FAMILIES else f"not a procedural family (choose from {', '.join(FAMILIES)})"


def open_source(families, **options) -> ProceduralSource:
    return ProceduralSource(list(families), spec="procedural:" + ",".join(families), **options)
