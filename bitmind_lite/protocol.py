"""The wire protocol between validators and miners: one image in, one probability out.

Everything a node needs to agree on lives here: the request/response models, the limits, and the only two
functions that turn images into wire strings and back. Both sides import these, so a limit changes in one place.
"""
from __future__ import annotations

import base64
import binascii
import io
import math
from typing import Optional, Union

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, field_validator

# ---- limits (one place; the miner maps violations to HTTP 413/415/400) ----
MAX_BODY_BYTES = 8 * 1024 * 1024  # whole JSON request body
MAX_IMAGE_BYTES = 6 * 1024 * 1024  # decoded image file
MAX_PIXELS = 4096 * 4096  # width * height, checked from the header before any pixel is decoded
MIN_SIDE = 32  # smaller images carry too little up-sampling evidence to judge
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
# 8-bit RGB or grayscale only: alpha, CMYK, palettes and 16-bit data are not photographs as a camera or a
# generator delivers them, and accepting them would let the container, not the pixels, decide the answer.
ALLOWED_MODES = ("RGB", "L")
DETECT_PATH = "/v1/detect"


class InvalidImage(ValueError):
    """The image cannot be used. `kind` tells callers which HTTP status fits: size -> 413, format -> 415, else 400."""

    def __init__(self, message: str, kind: str = "invalid"):
        super().__init__(message)
        self.kind = kind


class ImageSynapse(BaseModel):
    """One detection challenge. Requests carry `image`; answers carry `prediction` (P(AI-generated))."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field("", description="base64 of a JPEG, PNG or WebP file", max_length=MAX_BODY_BYTES)
    prediction: Optional[float] = Field(None, ge=0.0, le=1.0, description="P(AI-generated); null = not answered")
    detector: Optional[str] = Field(None, max_length=64, description="name/version of the detector that answered")
    attribution: Optional[str] = Field(None, max_length=128, description="optional guess of the generator family")

    @field_validator("prediction")
    @classmethod
    def _finite(cls, v: Optional[float]) -> Optional[float]:
        if v is not None and not math.isfinite(v):
            raise ValueError("prediction must be a finite number in [0, 1]")
        return v


class DetectResponse(BaseModel):
    """What a miner sends back: the answer only, never the image (the old stack echoed 26 KB per answer)."""

    prediction: float = Field(..., ge=0.0, le=1.0)
    detector: str
    version: str


def encode_image(image: Union[Image.Image, np.ndarray, "torch.Tensor"], format: str = "PNG", quality: int = 95) -> str:  # noqa: F821
    """Encode a PIL image, an HxWx3 uint8 array or a 3xHxW float tensor in [0, 1] as base64 `format` bytes."""
    pil = _to_pil(image)
    fmt = format.upper()
    if fmt not in ALLOWED_FORMATS:
        raise ValueError(f"format must be one of {ALLOWED_FORMATS}, got {format!r}")
    buf = io.BytesIO()
    kwargs = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    pil.save(buf, format=fmt, **kwargs)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_image(data: str) -> Image.Image:
    """Decode a base64 image string into an RGB PIL image, or raise `InvalidImage` saying why."""
    if not isinstance(data, str) or not data:
        raise InvalidImage("image is empty")
    if len(data) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise InvalidImage(f"image is larger than {MAX_IMAGE_BYTES} bytes", kind="size")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage("image is not valid base64") from None
    if not raw:
        raise InvalidImage("image is empty")
    try:
        img = Image.open(io.BytesIO(raw))  # lazy: reads the header only
    except UnidentifiedImageError:
        raise InvalidImage("image is not a JPEG, PNG or WebP file", kind="format") from None
    except Image.DecompressionBombError as e:
        raise InvalidImage(f"image is too large (decompression bomb): {e}", kind="size") from None
    except (OSError, ValueError) as e:
        raise InvalidImage(f"image header is unreadable: {e}") from None
    if img.format not in ALLOWED_FORMATS:
        raise InvalidImage(f"image format {img.format} is not one of {', '.join(ALLOWED_FORMATS)}", kind="format")
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise InvalidImage(f"image is {w}x{h}; at most {MAX_PIXELS} pixels are accepted", kind="size")
    if min(w, h) < MIN_SIDE:
        raise InvalidImage(f"image is {w}x{h}; both sides must be at least {MIN_SIDE} pixels")
    if getattr(img, "n_frames", 1) > 1:
        raise InvalidImage("animated images are not accepted; send a single frame")
    if img.mode not in ALLOWED_MODES or "transparency" in img.info:
        raise InvalidImage(f"image mode {img.mode} is not accepted; send 8-bit RGB or grayscale without alpha")
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InvalidImage(f"image data is corrupt or truncated: {e}") from None
    return img.convert("RGB") if img.mode != "RGB" else img


def _to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, np.ndarray):
        arr = image
    else:  # a torch tensor, CHW float in [0, 1] (imported lazily: the protocol must not need torch)
        t = image.detach().cpu()
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(f"tensor must be 3xHxW, got {tuple(t.shape)}")
        arr = (t.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            arr = (np.clip(arr, 0, 1) * 255.0 + 0.5).astype(np.uint8)
        else:
            raise ValueError(f"array must be uint8 or float in [0, 1], got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"array must be HxWx3, got {arr.shape}")
    return Image.fromarray(arr, mode="RGB")
