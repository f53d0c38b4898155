"""Wire protocol: lossless round trips, and one clear InvalidImage for every kind of bad image."""
import base64
import io
import math
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from bitmind_lite.protocol import (
    MAX_ATTRIBUTION_CLASSES, MAX_PIXELS, DetectRequest, DetectResponse, ImageSynapse, InvalidImage, decode_image,
    encode_image, parse_detect_answer, read_detect_answer,
)


def _b64(img: Image.Image, fmt: str, **kw) -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def photo(real_photo) -> Image.Image:
    return real_photo.crop((0, 0, 96, 64))


def test_png_round_trip_is_lossless(photo):
    out = decode_image(encode_image(photo, format="PNG"))
    assert out.mode == "RGB" and out.size == photo.size
    assert np.array_equal(np.asarray(out), np.asarray(photo))


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_lossy_round_trips_stay_close(photo, fmt):
    out = decode_image(encode_image(photo, format=fmt, quality=95))
    assert out.size == photo.size
    diff = np.abs(np.asarray(out, dtype=float) - np.asarray(photo, dtype=float)).mean()
    assert diff < 4.0


def test_encode_accepts_arrays_and_tensors(photo):
    arr = np.asarray(photo)
    assert np.array_equal(np.asarray(decode_image(encode_image(arr))), arr)
    t = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    assert np.array_equal(np.asarray(decode_image(encode_image(t))), arr)
    with pytest.raises(ValueError, match="format"):
        encode_image(photo, format="GIF")


def test_grayscale_is_accepted_as_rgb(photo):
    out = decode_image(_b64(photo.convert("L"), "PNG"))
    assert out.mode == "RGB"


def _bomb_png(w: int, h: int) -> str:
    """A valid PNG header claiming w x h pixels (a few hundred bytes): decoding it would need gigabytes."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return base64.b64encode(raw).decode()


def _animated_gif_like_webp(photo) -> str:
    buf = io.BytesIO()
    photo.save(buf, format="WEBP", save_all=True, append_images=[photo.rotate(10)], duration=100)
    return base64.b64encode(buf.getvalue()).decode()


def _truncated_jpeg(photo) -> str:
    buf = io.BytesIO()
    photo.save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()[: len(buf.getvalue()) // 2]).decode()


BAD = {
    "empty": lambda p: "",
    "not base64": lambda p: "this is *not* base64!",
    "base64 of nothing": lambda p: "====",
    "text file": lambda p: base64.b64encode(b"hello, I am a text file\n" * 10).decode(),
    "truncated jpeg": _truncated_jpeg,
    "20000x20000 png bomb": lambda p: _bomb_png(20000, 20000),
    "animated webp": _animated_gif_like_webp,
    "cmyk jpeg": lambda p: _b64(p.convert("CMYK"), "JPEG"),
    "16-bit png": lambda p: _b64(Image.fromarray(np.asarray(p.convert("L"), dtype=np.uint16) * 256), "PNG"),
    "alpha png": lambda p: _b64(p.convert("RGBA"), "PNG"),
    "gif": lambda p: _b64(p.convert("P"), "GIF"),
    "too small": lambda p: _b64(p.crop((0, 0, 8, 8)), "PNG"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_images_raise_invalid_image_with_a_message(case, photo):
    with pytest.raises(InvalidImage) as e:
        decode_image(BAD[case](photo))
    assert str(e.value) and e.value.kind in ("size", "format", "invalid")


def test_bomb_and_format_errors_say_which_status_fits(photo):
    with pytest.raises(InvalidImage) as e:
        decode_image(_bomb_png(20000, 20000))
    assert e.value.kind == "size"
    with pytest.raises(InvalidImage) as e:
        decode_image(_bomb_png(int(math.sqrt(MAX_PIXELS)) + 8, int(math.sqrt(MAX_PIXELS)) + 8))
    assert e.value.kind == "size" and "pixels" in str(e.value)
    with pytest.raises(InvalidImage) as e:
        decode_image(_b64(photo.convert("P"), "GIF"))
    assert e.value.kind == "format"


def test_response_validates_predictions():
    assert DetectResponse(prediction=0.25, detector="npr", version="v").prediction == 0.25
    for bad in (-0.1, 1.5, float("nan"), float("inf"), True, "0.5", None):
        with pytest.raises(ValidationError):
            DetectResponse(prediction=bad, detector="npr", version="v")
    with pytest.raises(ValidationError):
        DetectResponse(prediction=0.5, detector="npr", version="v", attribution="x" * 129)
    assert set(DetectResponse(prediction=0.5, detector="npr", version="v").model_dump()) == {
        "prediction", "detector", "version"}
    with_guess = DetectResponse(prediction=0.5, detector="npr", version="v", attribution="sdxl")
    assert DetectResponse.model_validate_json(with_guess.model_dump_json()).attribution == "sdxl"


def test_attribution_detail_is_bounded_optional_and_names_the_label():
    detail = {"label": "realcugan", "probs": {"real": 0.1, "realcugan": 0.7, "srmd": 0.2}}
    answer = DetectResponse(prediction=0.9, detector="dnadet", version="v", attribution_detail=detail)
    assert answer.attribution == "realcugan"  # what a validator that only knows `attribution` reads
    wire = answer.model_dump_json().encode()
    parsed, error = read_detect_answer(200, wire)
    assert error is None and parsed.attribution_detail.model_dump() == detail
    assert parsed.attribution_guess().label == "realcugan"
    assert parse_detect_answer(200, wire) == (0.9, "dnadet", None)
    assert "attribution_detail" not in DetectResponse(prediction=0.5, attribution="sdxl").model_dump()
    assert DetectResponse(prediction=0.5, attribution="sdxl").attribution_guess().model_dump() == {
        "label": "sdxl", "probs": {}}  # a miner that sends only the name
    assert DetectResponse(prediction=0.5).attribution_guess() is None
    too_many = {f"c{i}": 0.0 for i in range(MAX_ATTRIBUTION_CLASSES + 1)}
    for bad in ({"label": "x", "probs": too_many}, {"label": "x", "probs": {"x": 1.5}},
                {"label": "x", "probs": {"x": float("nan")}}, {"label": "x", "probs": {"x" * 65: 0.5}},
                {"label": "", "probs": {}}, {"probs": {"x": 0.5}}, "realcugan"):
        with pytest.raises(ValidationError):
            DetectResponse(prediction=0.5, attribution_detail=bad)
    assert len(DetectResponse(prediction=0.5, attribution_detail={"label": "x" * 128, "probs": {
        f"{i:064d}": 0.03 for i in range(MAX_ATTRIBUTION_CLASSES)}}).model_dump_json()) < 4096


def test_request_is_the_image_only():
    assert ImageSynapse is DetectRequest  # the old name still works for existing callers
    assert DetectRequest(image="x").model_dump() == {"image": "x"}
    for leftover in ("prediction", "detector", "attribution", "unknown_field"):
        with pytest.raises(ValidationError):
            DetectRequest(image="x", **{leftover: 0.5})
    with pytest.raises(ValidationError):
        DetectRequest()
