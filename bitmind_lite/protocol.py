"""The wire protocol between validators and miners: one image in, one probability out.

Everything a node needs to agree on lives here: the request/response models, the error kinds and their statuses,
the limits, the only two functions that turn images into wire strings and back, and the one reader of answers
(`read_detect_answer`; `parse_detect_answer` is its scored part). Both sides import these, so a limit changes in
one place.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
from enum import Enum
from typing import Annotated, Optional, Union

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_serializer, model_validator

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
# The caller's own timeout in seconds, sent with each request: a miner drops a request whose caller has given up
# instead of computing an answer nobody reads (the miner caps it by its own request_timeout).
DEADLINE_HEADER = "X-Bitmind-Timeout"
MAX_ATTRIBUTION_CLASSES = 32  # classes in an answer's attribution: ~3 KB at most, far below an answer's limit


class ErrorKind(str, Enum):
    """Every way a detect request can fail, with the HTTP status it is answered with (one table for both sides)."""

    malformed = "malformed"  # body or image unusable
    unauthorized = "unauthorized"  # btauth/1 signature missing or wrong
    forbidden = "forbidden"  # caller not registered / no permit / too little stake
    too_large = "too_large"  # body or image too large
    unsupported = "unsupported"  # image format not accepted
    rate_limited = "rate_limited"
    model_error = "model_error"  # the detector failed
    timeout = "timeout"  # no answer inside the caller's deadline
    unavailable = "unavailable"  # queue full or metagraph not loaded (Retry-After)

    @property
    def status(self) -> int:
        return _STATUS[self]

    @property
    def description(self) -> str:
        return _DESCRIPTION[self]


_STATUS = {ErrorKind.malformed: 400, ErrorKind.unauthorized: 401, ErrorKind.forbidden: 403,
           ErrorKind.too_large: 413, ErrorKind.unsupported: 415, ErrorKind.rate_limited: 429,
           ErrorKind.model_error: 500, ErrorKind.timeout: 504, ErrorKind.unavailable: 503}
_DESCRIPTION = {ErrorKind.malformed: "malformed body or image",
                ErrorKind.unauthorized: "missing or invalid btauth/1 signature",
                ErrorKind.forbidden: "caller not registered, no validator permit or too little stake",
                ErrorKind.too_large: "body or image too large", ErrorKind.unsupported: "image format not accepted",
                ErrorKind.rate_limited: "rate limit", ErrorKind.model_error: "model error",
                ErrorKind.timeout: "no answer inside the caller's deadline",
                ErrorKind.unavailable: "queue full or metagraph not loaded (see Retry-After)"}


class InvalidImage(ValueError):
    """The image cannot be used. `kind` tells callers which HTTP status fits: size -> 413, format -> 415, else 400."""

    def __init__(self, message: str, kind: str = "invalid"):
        super().__init__(message)
        self.kind = kind


class DetectRequest(BaseModel):
    """One detection challenge: the image and nothing else (an unknown field is a client bug, refused with 400)."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(..., description="base64 of a JPEG, PNG or WebP file", max_length=MAX_BODY_BYTES)


ImageSynapse = DetectRequest  # the name the request had under the old Synapse-based stack


ClassName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Probability = Annotated[float, Field(ge=0.0, le=1.0, strict=True, allow_inf_nan=False)]


class Attribution(BaseModel):
    """A detector's guess of the generator *architecture* behind an image (informative; scoring weight 0 by default,
    see docs/incentive.md). `label` is the most likely generator class, `probs` every class's probability, "real"
    included, so P(real) + the rest = 1 for a softmax detector (not checked: other detectors may mean other things)."""

    label: str = Field(..., min_length=1, max_length=128, description="most likely generator architecture "
                       "(e.g. realcugan)")
    probs: dict[ClassName, Probability] = Field(default_factory=dict, max_length=MAX_ATTRIBUTION_CLASSES,
                                                description="probability of each class, 'real' included")


class DetectResponse(BaseModel):
    """What a miner sends back: the answer only, never the image (the old stack echoed 26 KB per answer).

    Validators read it leniently (fields they do not know are ignored, so miners can add some) but strictly where it
    counts: `prediction` must be a finite number in [0, 1], not a string or a bool that happens to convert.
    """

    prediction: float = Field(..., ge=0.0, le=1.0, strict=True, allow_inf_nan=False,
                              description="P(AI-generated); above 0.5 means AI-generated")
    # informative only: a bare {"prediction": p} is a valid answer (scoring reads the prediction alone)
    detector: str = Field("", max_length=64, description="name of the detector that answered")
    version: str = Field("", max_length=64, description="version (weights fingerprint) of that detector")
    attribution: Optional[str] = Field(None, max_length=128,
                                       description="optional guess of the generator family; not scored")
    # The class probabilities ride in a field of their own: validators that predate it declare `attribution` a
    # string, so an object there would make them refuse (and zero) the whole answer; an unknown field they ignore.
    attribution_detail: Optional[Attribution] = Field(None, description="the same guess with every class's "
                                                      "probability; not scored")

    @model_validator(mode="after")
    def _label_from_detail(self):
        if self.attribution is None and self.attribution_detail is not None:
            self.attribution = self.attribution_detail.label  # what a validator reading only `attribution` sees
        return self

    def attribution_guess(self) -> Optional[Attribution]:
        """The guess as one model: the detail when sent, else the bare label (miners that send only the name)."""
        if self.attribution_detail is not None or self.attribution is None:
            return self.attribution_detail
        return Attribution(label=self.attribution)

    @model_serializer(mode="wrap")
    def _omit_missing_attribution(self, handler):
        data = handler(self)  # an answer without attribution stays the three fields miners have always sent
        if isinstance(data, dict):
            for key in ("attribution", "attribution_detail"):
                if data.get(key) is None:
                    data.pop(key, None)
        return data


def is_valid_prediction(p: object) -> bool:
    """A finite real number in [0, 1] (bools are not numbers here: `true` is not a probability)."""
    return isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p) and 0.0 <= p <= 1.0


def read_detect_answer(status: int, raw: bytes) -> tuple[Optional[DetectResponse], Optional[str]]:
    """(the validated answer, error) from a miner's HTTP answer; error is None exactly when there is an answer.

    The one reader of answers: the validator, the benchmarks and the test miners all judge an answer here (directly
    or through `parse_detect_answer`). The answer keeps everything the miner sent that the protocol knows,
    the attribution included.
    """
    if status != 200:
        if 300 <= status < 400:
            return None, f"redirect (3xx) refused: HTTP {status}"
        try:
            detail = json.loads(raw).get("detail")
        except (ValueError, AttributeError):
            detail = None
        return None, f"HTTP {status}" + (f": {str(detail)[:200]}" if detail else "")
    if not raw:
        return None, "empty answer"
    try:
        return DetectResponse.model_validate_json(raw), None
    except ValidationError as e:
        return None, _answer_error(e.errors()[0])


def parse_detect_answer(status: int, raw: bytes) -> tuple[Optional[float], Optional[str], Optional[str]]:
    """(prediction, detector, error): `read_detect_answer` for callers that need only the scored part."""
    answer, error = read_detect_answer(status, raw)
    return (None, None, error) if answer is None else (answer.prediction, answer.detector, None)


def _answer_error(first: dict) -> str:
    """One line saying what is wrong with an answer, from pydantic's first complaint."""
    where = ".".join(str(x) for x in first["loc"])
    if first["type"] == "json_invalid":
        return "answer is not JSON"
    if first["type"] == "missing":
        return f"answer has no {where}"
    if where == "prediction":
        return f"prediction {str(first['input'])[:40]!r} is not a finite number in [0, 1]"
    return f"invalid answer: {where or 'body'}: {first['msg']}"


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
