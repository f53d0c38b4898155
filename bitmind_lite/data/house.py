"""`house`: small generators this project trained itself on the bundled real photos (base_miner/train_generators.py),
weights in weights/generators/<family>.pt. Each one is image-conditioned, so its fake is the *twin* of the real
window (same content, generator pixels), as the dataset builder's (real, fake) pairs need:

    house_gan_deconv        encoder -> 8-ch latent at /4 -> decoder up-sampling with two stride-2 4x4 transposed
                            convs; trained with L1 + hinge PatchGAN loss (an autoencoder-GAN)
    house_gan_pixelshuffle  the same, but the decoder up-samples with conv -> PixelShuffle(2) twice (sub-pixel conv,
                            ICNR init); no nearest/bilinear interpolation anywhere
    house_vae               diffusers AutoencoderKL, block_out_channels (32, 64, 64): 4-ch latent at /4, SD-style
                            decoder (ResNet blocks, nearest 2x + conv up-sampling); an encode/decode round-trip
    house_ddpm              diffusers UNet2DModel (16, 32, 64), no attention, trained on noise prediction;
                            SDEdit img2img: noise the window to strength*T (strength drawn per image), then 3 DDIM
                            steps

All models are fully convolutional (trained on small random crops, applied at any size): the window is rendered
with a MARGIN of photo context, replicate-padded to a multiple of 4 (plus a random 0-3 px grid offset, so the
generators' up-sampling grid does not always line up with NPR's 2x2 grid), cropped back exactly, never resized,
and re-encoded like its source photo (photo.reencode_like). diffusers is imported only when a diffusers family loads.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from bitmind_lite.data.photo import Photo, SourceError, ensure_min_size, pil_to_tensor, reencode_like, tensor_to_pil

_SRC = "weights/generators (trained by base_miner/train_generators.py on the bundled photos)"
FAMILIES = {  # the provider table of families.py: name -> source, description
    "house_gan_deconv": {"source": _SRC, "description": "autoencoder-GAN, decoder up-samples with stride-2 deconvs"},
    "house_gan_pixelshuffle": {"source": _SRC,
                               "description": "autoencoder-GAN, decoder up-samples with conv + PixelShuffle(2)"},
    "house_vae": {"source": _SRC, "description": "SD-style AutoencoderKL (32,64,64), 4-ch latent at /4: round-trip"},
    "house_ddpm": {"source": _SRC, "description": "tiny DDPM UNet, SDEdit img2img (strength 0.2-0.5), 3 DDIM steps"},
}
DIFFUSERS_FAMILIES = ("house_vae", "house_ddpm")
WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights" / "generators"
FORMAT = "bitmind-lite house generator v1"
MARGIN = 16  # photo pixels rendered around the box so the box never sees a padded border
MULTIPLE = 4  # every model works at /4: inputs are padded to a multiple of 4

# DDPM: one noise schedule for training and sampling; the UNet is trained only on t < TRAIN_T_MAX because
# img2img never starts above strength_max * T.
NOISE_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}
TRAIN_T_MAX = 500
STRENGTH_RANGE = (0.2, 0.5)
DDIM_STEPS = 3  # denoising steps from t = strength * T down to 0 (each one is a full UNet pass)

DEFAULT_CONFIGS = {  # the architecture of each family; saved in its weights file and rebuilt from there
    "house_gan_deconv": {"up": "deconv", "latent_channels": 8, "widths": [16, 32, 64]},
    "house_gan_pixelshuffle": {"up": "pixelshuffle", "latent_channels": 8, "widths": [16, 32, 64]},
    "house_vae": {"block_out_channels": [32, 64, 64], "down_block_types": ["DownEncoderBlock2D"] * 3,
                  "up_block_types": ["UpDecoderBlock2D"] * 3, "layers_per_block": 1, "latent_channels": 4,
                  "norm_num_groups": 32, "mid_block_add_attention": False},
    "house_ddpm": {"block_out_channels": [16, 32, 64], "down_block_types": ["DownBlock2D"] * 3,
                   "up_block_types": ["UpBlock2D"] * 3, "layers_per_block": 1, "add_attention": False,
                   "norm_num_groups": 8},
}


def weights_path(family: str, weights_dir: str | Path | None = None) -> Path:
    return Path(weights_dir or WEIGHTS_DIR) / f"{family}.pt"


def train_command(family: str) -> str:
    return f"python -m base_miner.train_generators --family {family} --out weights/generators"


# ---------------------------------------------------------------- the autoencoder-GANs


def conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    # replicate padding: a zero-padded conv would darken the borders of what it renders
    return nn.Conv2d(cin, cout, 3, stride, 1, padding_mode="replicate")


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1, self.conv2 = conv3(ch, ch), conv3(ch, ch)

    def forward(self, x):
        return x + self.conv2(F.leaky_relu(self.conv1(F.leaky_relu(x, 0.2)), 0.2))


class Upsample2x(nn.Module):
    """The layer whose fingerprint the family is named after: stride-2 4x4 deconv, or conv + PixelShuffle(2)."""

    def __init__(self, cin: int, cout: int, up: str):
        super().__init__()
        self.up = up
        if up == "deconv":
            self.layer = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)
        elif up == "pixelshuffle":
            self.layer = conv3(cin, cout * 4)
            with torch.no_grad():  # ICNR init: starts as nearest up-sampling of one conv (no checkerboard at init)
                self.layer.weight.copy_(self.layer.weight[:cout].repeat_interleave(4, dim=0))
                self.layer.bias.copy_(self.layer.bias[:cout].repeat_interleave(4))
        else:
            raise ValueError(f"unknown up-sampler {up!r} (deconv | pixelshuffle)")

    def forward(self, x):
        return self.layer(x) if self.up == "deconv" else F.pixel_shuffle(self.layer(x), 2)


class AutoencoderGAN(nn.Module):
    """x in [-1, 1] (Bx3xHxW, H and W multiples of 4) -> latent (B x latent_channels x H/4 x W/4) -> image."""

    def __init__(self, up: str, latent_channels: int = 8, widths=(16, 32, 64)):
        super().__init__()
        c1, c2, c3 = widths
        act = nn.LeakyReLU(0.2)
        self.encoder = nn.Sequential(conv3(3, c1), act, conv3(c1, c2, 2), act, ResBlock(c2), conv3(c2, c3, 2), act,
                                     ResBlock(c3), conv3(c3, latent_channels))
        self.decoder = nn.Sequential(conv3(latent_channels, c3), ResBlock(c3), nn.LeakyReLU(0.2),
                                     Upsample2x(c3, c2, up), ResBlock(c2), nn.LeakyReLU(0.2),
                                     Upsample2x(c2, c1, up), ResBlock(c1), nn.LeakyReLU(0.2), conv3(c1, 3))

    def forward(self, x):
        return self.decoder(self.encoder(x))


def build_model(family: str, config: dict | None = None) -> nn.Module:
    """A fresh (untrained) model of a family; `config` defaults to DEFAULT_CONFIGS[family]."""
    config = dict(DEFAULT_CONFIGS[family] if config is None else config)
    if family in ("house_gan_deconv", "house_gan_pixelshuffle"):
        return AutoencoderGAN(**config)
    if family == "house_vae":
        from diffusers import AutoencoderKL  # lazy: diffusers is optional and slow to import

        return AutoencoderKL(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    if family == "house_ddpm":
        from diffusers import UNet2DModel

        return UNet2DModel(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    raise SourceError(f"unknown house family {family!r}; choose from {', '.join(FAMILIES)}")


# ---------------------------------------------------------------- weights files


def save_weights(path: str | Path, family: str, model: nn.Module, config: dict, train: dict) -> None:
    """fp16 state dict + architecture + training record, written atomically (a torn file never looks valid)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save({"format": FORMAT, "family": family, "config": config, "state_dict": state, "train": train}, tmp)
    os.replace(tmp, path)


def file_fingerprint(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def load_weights(family: str, path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode, fp32, on device; the file's record: config, train, weights, weights_sha256)."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SourceError(f"house family {family!r}: cannot read weights {path}: {e}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or blob.get("family") != family:
        raise SourceError(f"house family {family!r}: {path} is not a {family} weights file ({FORMAT})")
    model = build_model(family, blob["config"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()})
    record = {"config": blob["config"], "train": blob.get("train", {}), "weights": path.name,
              "weights_sha256": file_fingerprint(path)}
    # channels_last: oneDNN runs these thin convs ~20% faster that way (measured on CPU for all four families)
    return model.eval().to(device, memory_format=torch.channels_last), record


# ---------------------------------------------------------------- rendering


def sample_params(rng: np.random.Generator, family: str) -> dict:
    """Per-image parameters (JSON-serialisable): grid offset, seed, and for DDPM the img2img strength."""
    offset = [int(rng.integers(MULTIPLE)), int(rng.integers(MULTIPLE))]
    params = {"family": family, "kind": "house", "grid_offset": offset, "seed": int(rng.integers(2 ** 31 - 1))}
    if family == "house_ddpm":
        params["strength"] = round(float(rng.uniform(*STRENGTH_RANGE)), 4)
        params["ddim_steps"] = DDIM_STEPS
    return params


def alphas_cumprod() -> torch.Tensor:
    """The DDPM schedule's cumulative alphas (diffusers' "linear" betas, the schedule the UNet was trained on)."""
    betas = torch.linspace(NOISE_SCHEDULE["beta_start"], NOISE_SCHEDULE["beta_end"],
                           NOISE_SCHEDULE["num_train_timesteps"], dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_img2img(unet: nn.Module, x: torch.Tensor, strength: float, steps: int,
                 g: torch.Generator) -> tuple[torch.Tensor, list[int]]:
    """SDEdit: noise x (in [-1, 1]) to t0 = strength * T, then `steps` deterministic DDIM updates (eta 0) on
    evenly spaced timesteps t0 > ... > 0, the last one landing on the clean image (alpha_bar = 1)."""
    ab = alphas_cumprod().to(x.device)
    t0 = max(int(round(strength * NOISE_SCHEDULE["num_train_timesteps"])) - 1, 0)
    timesteps = [int(t) for t in np.linspace(t0, 0, steps, endpoint=False).round()]
    noise = torch.randn(x.shape, generator=g).to(x.device)  # drawn on CPU: the same fake on every device
    sample = ab[t0].sqrt() * x + (1 - ab[t0]).sqrt() * noise
    for i, t in enumerate(timesteps):
        eps = unet(sample, torch.tensor([t], device=x.device)).sample
        a_prev = ab[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.ones((), device=x.device)
        x0 = ((sample - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()).clamp(-1, 1)
        sample = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return sample, timesteps


@torch.inference_mode()
def render(family: str, model: nn.Module, x: torch.Tensor, params: dict) -> tuple[torch.Tensor, dict]:
    """Run one generator on a 1x3xHxW image in [0, 1] (any H, W): pad by the grid offset and to a multiple of 4
    (replicate), generate, crop back to HxW. Returns the image in [0, 1] and extra params (DDPM timesteps)."""
    ox, oy = params["grid_offset"]
    h, w = x.shape[-2:]
    pad = (ox, -(ox + w) % MULTIPLE, oy, -(oy + h) % MULTIPLE)
    device = next(model.parameters()).device
    z = F.pad(x.to(device) * 2 - 1, pad, mode="replicate").contiguous(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(params["seed"])
    extra = {}
    if family == "house_vae":  # the latent is *sampled* from the posterior, as SD img2img's encode does
        dist = model.encode(z).latent_dist
        latent = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g).to(device)
        y = model.decode(latent).sample
    elif family == "house_ddpm":
        y, timesteps = ddim_img2img(model, z, params["strength"], params["ddim_steps"], g)
        extra = {"timesteps": timesteps}
    else:
        y = model(z)
    y = y[..., oy:oy + h, ox:ox + w]
    return ((y.float() + 1) / 2).clamp_(0, 1).cpu(), extra


def render_window(family: str, model: nn.Module, image: Image.Image, box: tuple[int, int, int, int],
                  params: dict) -> tuple[Image.Image, dict]:
    """The generator's twin of image.crop(box), rendered with MARGIN pixels of context on every side: photo pixels
    where the photo has them, replicated edge pixels past its border (the diffusers models pad their convs with
    zeros, which would otherwise draw a dark frame on windows at the photo's edge)."""
    x0, y0 = max(box[0] - MARGIN, 0), max(box[1] - MARGIN, 0)
    x1, y1 = min(box[2] + MARGIN, image.width), min(box[3] + MARGIN, image.height)
    region = pil_to_tensor(image.crop((x0, y0, x1, y1)))
    left, top = MARGIN - (box[0] - x0), MARGIN - (box[1] - y0)
    region = F.pad(region, (left, MARGIN - (x1 - box[2]), top, MARGIN - (y1 - box[3])), mode="replicate")
    out, extra = render(family, model, region, params)
    w, h = box[2] - box[0], box[3] - box[1]
    return tensor_to_pil(out[..., MARGIN:MARGIN + h, MARGIN:MARGIN + w]), extra


# ---------------------------------------------------------------- the provider


def family_status(name: str, weights_dir: str | Path | None = None) -> str | None:
    if name not in FAMILIES:
        return f"not a house family (choose from {', '.join(FAMILIES)})"
    path = weights_path(name, weights_dir)
    if not path.is_file():
        return f"weights file {path} is missing; train it with `{train_command(name)}`"
    if name in DIFFUSERS_FAMILIES:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            return f"{name} needs `diffusers`: pip install 'bitmind-lite[online]'"
    return None


class HouseSource:
    """Fake source over house families: loads each family's weights once, renders the twin of a real window."""

    kind = "house"

    def __init__(self, families, device: str = "cpu", weights_dir: str | Path | None = None, match_jpeg: bool = True):
        from bitmind_lite.detectors.base import resolve_device

        self.families = tuple(families or FAMILIES)
        self.spec = "house:" + ",".join(self.families)
        for f in self.families:
            why = family_status(f, weights_dir)
            if why is not None:
                raise SourceError(f"house family {f!r} is unavailable: {why}")
        try:
            self.device = resolve_device(device)
        except ValueError as e:
            raise SourceError(f"fake source {self.spec!r}: {e}") from None
        self.match_jpeg = bool(match_jpeg)
        self.models, self.records = {}, {}
        for f in self.families:
            self.models[f], self.records[f] = load_weights(f, weights_path(f, weights_dir), self.device)

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "families": list(self.families), "device": str(self.device),
                "margin": MARGIN, "match_source_jpeg": self.match_jpeg,
                "weights": {f: {"file": r["weights"], "sha256": r["weights_sha256"],
                                "train_steps": r["train"].get("steps")} for f, r in self.records.items()}}

    def make(self, photo: Photo, box: tuple[int, int, int, int], rng: np.random.Generator,
             family: str | None = None) -> tuple[Image.Image, dict]:
        """The fake twin of `photo` cropped at `box`: same content, trained-generator pixels, same JPEG history."""
        family = family or self.families[int(rng.integers(len(self.families)))]
        if family not in self.models:
            raise SourceError(f"family {family!r} is not in {self.spec!r}")
        params = sample_params(rng, family)
        record = self.records[family]
        params.update(weights=record["weights"], weights_sha256=record["weights_sha256"],
                      train_steps=record["train"].get("steps"), margin=MARGIN)
        canvas = ensure_min_size(photo.image, max(box[2] - box[0], box[3] - box[1]))
        out, extra = render_window(family, self.models[family], canvas, box, params)
        params.update(extra)
        if self.match_jpeg:
            out, jpeg = reencode_like(out, photo, box)
            params["source_jpeg"] = jpeg
        return out, params

    def close(self) -> None:
        self.models.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def open_source(families, **options) -> HouseSource:
    """options: device ("cpu" default | "auto" | "cuda[:N]"), weights_dir, match_jpeg."""
    return HouseSource(list(families), **options)
