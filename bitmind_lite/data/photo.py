"""What every source hands around: a `Photo` (full-size RGB image + where it came from + its JPEG history),
and the few pixel helpers that both classes share (windows, tensors, JPEG re-encoding "like the source").

Why JPEG history matters: the bundled photos are ~640 px JPEGs. A fake re-rendered from one loses the source's
8x8 JPEG blocking, so a detector could learn "no blocking = fake" and then call every clean real photo fake
(the "biased to fake" failure in npr.md). `reencode_like` gives a fake the very compression its source photo had
(same quantisation tables, same chroma subsampling, same block-grid phase), so the classes differ only by the
generator step.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, JpegImagePlugin

JPEG_MCU = 16  # 4:2:0 JPEG codes 16x16 macro-blocks: align re-encoding to this grid
MIN_CROP_STD, FLAT_RETRIES = 2.0, 10  # grey-level std below which a crop is flat; redraws before giving up


class SourceError(ValueError):
    """A source spec cannot be used (unknown, empty, unreachable, missing package). The message names the spec."""


@dataclass
class Photo:
    """A full-size source image. `qtables`/`subsampling` describe its JPEG encoding (None for PNG and the like)."""

    id: str
    image: Image.Image
    info: dict = field(default_factory=dict)  # origin, licence, path ... (JSON-serialisable)
    qtables: dict | None = None
    subsampling: int | None = None


def load_photo(fp, photo_id: str, info: dict | None = None) -> Photo:
    """Open an image file (path or file object) as an RGB `Photo`, keeping its JPEG tables if it is a JPEG."""
    with Image.open(fp) as im:
        im.load()
        qtables = subsampling = None
        if im.format == "JPEG" and getattr(im, "quantization", None):
            qtables = dict(im.quantization)
            subsampling = JpegImagePlugin.get_sampling(im)
            subsampling = subsampling if subsampling in (0, 1, 2) else 2
        rgb = _to_rgb(im)
    return Photo(photo_id, rgb, dict(info or {}), qtables, subsampling)


def photo_from_pil(img: Image.Image, photo_id: str, info: dict | None = None) -> Photo:
    """Wrap an already decoded PIL image (e.g. from `datasets`), keeping JPEG tables when it still has them."""
    photo = Photo(photo_id, _to_rgb(img), dict(info or {}))
    if img.format == "JPEG" and getattr(img, "quantization", None):
        sampling = JpegImagePlugin.get_sampling(img)
        photo.qtables, photo.subsampling = dict(img.quantization), sampling if sampling in (0, 1, 2) else 2
    return photo


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        bg = Image.new("RGB", im.size, (255, 255, 255))  # flatten alpha on white, as a viewer shows it
        bg.paste(im.convert("RGBA"), mask=im.convert("RGBA").split()[-1])
        return bg
    return im.convert("RGB") if im.mode != "RGB" else im.copy()


def even(n: float) -> int:
    return int(n) & ~1


def ensure_min_size(img: Image.Image, side: int) -> Image.Image:
    """Tile (never resize: resizing erases NPR's evidence) an image smaller than `side` on either side."""
    w, h = img.size
    if w >= side and h >= side:
        return img
    W, H = max(w, side), max(h, side)
    return Image.fromarray(np.tile(np.asarray(img), (-(-H // h), -(-W // w), 1))[:H, :W])


def random_box(rng: np.random.Generator, size: tuple[int, int], side: int) -> tuple[int, int, int, int]:
    """A `side` x `side` box at a random EVEN offset inside an image of `size` (w, h) >= side.

    Even offsets keep the source's own 2x2 phase (e.g. its chroma up-sampling), the grid NPR reads, identical
    for both classes; the generator's grid phase is randomised separately (see procedural.py).
    """
    w, h = size
    x = 2 * int(rng.integers(0, (w - side) // 2 + 1))
    y = 2 * int(rng.integers(0, (h - side) // 2 + 1))
    return (x, y, x + side, y + side)


def is_flat(img: Image.Image) -> bool:
    """A crop with almost no content (a white product backdrop, a grey sky). It shows nothing to judge, and its
    fake twin is pixel-identical, so samplers and the dataset builder draw again."""
    return float(np.asarray(img.convert("L"), dtype=np.float32).std()) < MIN_CROP_STD


def content_box(rng: np.random.Generator, canvas: Image.Image, side: int) -> tuple[int, int, int, int]:
    """random_box, redrawn (a bounded number of times) while the crop is flat. The first draw is random_box's own,
    so windows that were fine before stay exactly the same."""
    box = random_box(rng, canvas.size, side)
    for _ in range(FLAT_RETRIES):
        if not is_flat(canvas.crop(box)):
            break
        box = random_box(rng, canvas.size, side)
    return box


def random_window(photo: Photo, rng: np.random.Generator, side: int) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A random even-offset `side`-square crop of the photo (tiled first when the photo is smaller)."""
    img = ensure_min_size(photo.image, side)
    box = random_box(rng, img.size, side)
    return img.crop(box), box


def reencode_like(img: Image.Image, photo: Photo, box: tuple[int, int, int, int]) -> tuple[Image.Image, dict | None]:
    """Give `img` (a render of `photo` cropped at `box`) the JPEG history of the photo: same tables, same chroma
    subsampling and the same 16x16 block-grid phase. PNG-born photos have no history: the image is returned as is."""
    if photo.qtables is None:
        return img, None
    px, py = box[0] % JPEG_MCU, box[1] % JPEG_MCU
    w, h = img.size
    canvas = img
    if px or py:  # pad top-left by edge replication so the block grid lands where the photo's grid was
        arr = np.asarray(img)
        canvas = Image.fromarray(np.pad(arr, ((py, 0), (px, 0), (0, 0)), mode="edge"))
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", qtables=photo.qtables, subsampling=photo.subsampling)
    buf.seek(0)
    with Image.open(buf) as out:
        out = out.convert("RGB").crop((px, py, px + w, py + h))
    return out, {"qtables": "source", "subsampling": photo.subsampling, "grid_phase": [px, py]}


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """HxWx3 uint8 PIL -> 1x3xHxW float32 in [0, 1]."""
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """1x3xHxW (or 3xHxW) float in [0, 1] -> RGB PIL, rounding to nearest."""
    x = x.squeeze(0) if x.ndim == 4 else x
    arr = x.clamp(0, 1).mul(255.0).add_(0.5).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(arr, mode="RGB")
