"""The online kind: fakes from diffusers checkpoints (the online validator's generators).

    sd15           stable-diffusion-v1-5/stable-diffusion-v1-5      text-to-image
    sdxl_turbo     stabilityai/sdxl-turbo                          text-to-image, 2 steps, no guidance
    flux_schnell   black-forest-labs/FLUX.1-schnell                text-to-image, 4 steps, no guidance
    sd15_img2img   SD 1.5 through its img2img pipeline             the real window re-generated; strength recorded
    sd_inpaint     stable-diffusion-v1-5/stable-diffusion-inpainting  a masked region of the window repainted

A family runs here only when its checkpoint is in the local Hugging Face cache (or is a local folder) and diffusers
imports: a validator never starts a multi-GB download mid-round. `BITMIND_ONLINE_MODELS='sd15=/dir,sd_inpaint=org/id'`
(or `open_source(..., models={...})`) points families at other checkpoints, e.g. the tiny stand-ins that
`tiny_pipelines.build_tiny_sd_pipeline` writes for tests. `diffusers:MODEL_ID_OR_DIR` (sources.py) is a text-to-image source for
any checkpoint, outside the registry.

As in the reference validator: the pipeline class comes from the model's own config (model_index.json); the prompt is
a caption of the real window when a captioning model is available (BLIP-style, via transformers) and a template
otherwise, truncated to the shortest text-encoder limit (77 CLIP tokens); NaN outputs are retried with a new seed;
`close()` releases GPU memory. Unlike the reference, pipelines are loaded once and kept (reloading per challenge was
v1's main slowness), and families on one checkpoint share its weights (`from_pipe`).

Images are generated at the box size rounded up to a multiple of 16 (FLUX packs 2x2 latents of an 8x VAE) and
cropped, never resized. img2img and inpainting start from the real window (edge-padded to that size), so their fake
is its twin; the inpainted region is blended back through a semisynthetic mask (semisynthetic.py), so outside the
mask the pixels are the window's. Then the source photo's JPEG history, as for every fake (photo.reencode_like).

diffusers/transformers are optional (`pip install 'bitmind-lite[online]'`) and imported only when used.
"""
from __future__ import annotations

import gc
import inspect
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from loguru import logger
from PIL import Image

from bitmind_lite.data.photo import Photo, SourceError, ensure_min_size, random_box, reencode_like
from bitmind_lite.data.semisynthetic import composite, sample_mask
from bitmind_lite.detectors.base import resolve_device

# Per checkpoint class (model_index.json): defaults from the reference validator / model cards, constructor extras.
SD = {"steps": 30, "guidance": 7.5, "cuda_dtype": torch.float16,
      "extra": {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}}
PIPELINES = {
    "StableDiffusionPipeline": SD, "StableDiffusionImg2ImgPipeline": SD, "StableDiffusionInpaintPipeline": SD,
    "StableDiffusionXLPipeline": {
        "steps": 30, "guidance": 7.0, "cuda_dtype": torch.float16, "extra": {"add_watermarker": False}},
    "FluxPipeline": {"steps": 28, "guidance": 3.5, "cuda_dtype": torch.bfloat16, "extra": {}},
}
GENERIC = {"steps": 30, "guidance": 5.0, "cuda_dtype": torch.float16, "extra": {}}
TASKS = {  # task -> the diffusers class that loads a checkpoint for it (text2img: the checkpoint's own class)
    "text2img": None, "img2img": "AutoPipelineForImage2Image", "inpaint": "AutoPipelineForInpainting"}
SIZE_MULTIPLE = 16  # SD/SDXL need 8 (VAE); FLUX packs 2x2 latents, so 16 suits them all
IMG2IMG_STRENGTH = (0.3, 0.7)  # how much of the window is re-noised; recorded per image

FAMILIES = {  # the online provider table; "source" is the default hub id (BITMIND_ONLINE_MODELS overrides it)
    "sd15": {"source": "stable-diffusion-v1-5/stable-diffusion-v1-5", "task": "text2img",
             "description": "Stable Diffusion 1.5 text-to-image, prompted by a caption of the window"},
    "sdxl_turbo": {"source": "stabilityai/sdxl-turbo", "task": "text2img", "steps": 2, "guidance": 0.0,
                   "description": "SDXL-Turbo text-to-image (adversarial distillation, 2 steps)"},
    "flux_schnell": {"source": "black-forest-labs/FLUX.1-schnell", "task": "text2img", "steps": 4, "guidance": 0.0,
                     "description": "FLUX.1-schnell text-to-image (rectified flow transformer, 4 steps)"},
    "sd15_img2img": {"source": "stable-diffusion-v1-5/stable-diffusion-v1-5", "task": "img2img",
                     "strength": IMG2IMG_STRENGTH,
                     "description": "Stable Diffusion 1.5 img2img of the real window (its twin; strength recorded)"},
    "sd_inpaint": {"source": "stable-diffusion-v1-5/stable-diffusion-inpainting", "task": "inpaint",
                   "strength": (0.8, 1.0),
                   "description": "SD inpainting of a masked region of the real window (semisynthetic; mask recorded)"},
}
MODELS_ENV = "BITMIND_ONLINE_MODELS"
DEFAULT_CAPTION_MODEL = "Salesforce/blip-image-captioning-base"
CAPTION_PROMPT = "a photograph of"
SUBJECTS = ("a dog", "a cat", "a mountain lake", "a city street", "a bowl of fruit", "an old man", "a young woman",
            "a red car", "a forest path", "a cup of coffee", "a sailing boat", "a bird on a branch", "a kitchen",
            "a beach at sunset", "a bicycle", "a field of flowers", "a snowy village", "a horse", "a library")
SETTINGS = ("in soft morning light", "at night", "on a rainy day", "in a studio", "in golden hour light",
            "under an overcast sky", "indoors", "in bright sunlight")
STYLES = ("a high quality photograph", "a DSLR photo, 50mm lens", "a candid smartphone photo", "a professional photo",
          "a film photograph", "a close-up photo")


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise SourceError(f"the diffusers source needs `{module}`: pip install 'bitmind-lite[online]'") from None


def template_prompt(rng: np.random.Generator) -> str:
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    return f"{pick(STYLES)} of {pick(SUBJECTS)} {pick(SETTINGS)}"


class Captioner:
    """Caption images with an image-to-text model (BLIP and the like). Loaded on first use; if it cannot be
    loaded (not installed, not cached while offline) it says so once and `__call__` returns None from then on."""

    def __init__(self, model: str, device: torch.device):
        self.model_name, self.device = model, device
        self.processor = self.model = None
        self.available: bool | None = None  # None: not tried yet

    def _load(self) -> bool:
        try:
            import transformers

            auto = getattr(transformers, "AutoModelForImageTextToText", None) or transformers.AutoModelForVision2Seq
            self.processor = transformers.AutoProcessor.from_pretrained(self.model_name)
            self.model = auto.from_pretrained(self.model_name).to(self.device).eval()
            self.available = True
        except Exception as e:  # ImportError, OSError (not cached offline), ValueError (not a captioner) ...
            logger.warning(f"captioning model {self.model_name!r} unavailable ({type(e).__name__}: {e}); "
                           "using prompt templates")
            self.available = False
        return self.available

    def __call__(self, img: Image.Image) -> str | None:
        if self.available is False or (self.available is None and not self._load()):
            return None
        with torch.inference_mode():
            inputs = self.processor(images=img, text=CAPTION_PROMPT, return_tensors="pt").to(self.device)
            ids = self.model.generate(**inputs, max_new_tokens=30)
        text = self.processor.decode(ids[0], skip_special_tokens=True).strip()
        return text or None

    def close(self) -> None:
        self.model = self.processor = None


def model_family(model: str) -> str:
    """A folder-safe family name for a model id or directory: diffusers-<last path part>."""
    name = Path(model.rstrip("/")).name or "model"
    return "diffusers-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in name).lower()


# -- where each online family's checkpoint is, and whether it can run here ------------------------------------------

def model_locations(models: dict[str, str] | None = None) -> dict[str, str]:
    """family -> hub id or folder: the defaults, then BITMIND_ONLINE_MODELS='fam=ID_OR_DIR,...', then `models`."""
    out = {name: info["source"] for name, info in FAMILIES.items()}
    env = os.environ.get(MODELS_ENV, "")
    for entry in filter(None, (e.strip() for e in env.split(","))):
        name, sep, location = (part.strip() for part in entry.partition("="))
        if not (sep and name in FAMILIES and location):
            raise SourceError(f"{MODELS_ENV}={env!r}: entry {entry!r} must be FAMILY=HUB_ID_OR_DIR with FAMILY one "
                              f"of {', '.join(FAMILIES)}")
        out[name] = os.path.expanduser(location)
    unknown = set(models or {}) - set(FAMILIES)
    if unknown:
        raise SourceError(f"online models: unknown families {sorted(unknown)}; choose from {', '.join(FAMILIES)}")
    return {**out, **(models or {})}


def _is_path(location: str) -> bool:
    return location.startswith(("/", ".", "~")) or Path(location).expanduser().exists()


def family_status(name: str, models: dict[str, str] | None = None) -> str | None:
    """None when the family's checkpoint is local (HF cache or folder) and diffusers imports; else why not."""
    if name not in FAMILIES:
        return f"not an online family (choose from {', '.join(FAMILIES)})"
    location = model_locations(models)[name]
    if _is_path(location):
        if not (Path(location).expanduser() / "model_index.json").is_file():
            return f"{location} is not a diffusers pipeline folder (no model_index.json)"
    else:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return "needs huggingface_hub and diffusers: pip install 'bitmind-lite[online]'"
        try:
            cached = try_to_load_from_cache(location, "model_index.json")
        except Exception as e:  # HFValidationError: neither a hub id nor a folder
            return f"{location!r} is neither a hub id nor a local folder ({type(e).__name__})"
        if not isinstance(cached, str):
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
            return (f"{location} is not in the local Hugging Face cache; run `hf download {location}` while online"
                    + (" (HF_HUB_OFFLINE=1 here)" if offline else ""))
    try:
        import diffusers  # noqa: F401
    except ImportError as e:
        return f"needs diffusers ({e}): pip install 'bitmind-lite[online]'"
    return None


def _round_up(n: int) -> int:
    return -(-n // SIZE_MULTIPLE) * SIZE_MULTIPLE


def _pad_to(img: Image.Image, w: int, h: int) -> Image.Image:
    """Edge-replicate `img` on the right and bottom to w x h (the window keeps its place at the top-left)."""
    arr = np.asarray(img)
    return Image.fromarray(np.pad(arr, ((0, h - arr.shape[0]), (0, w - arr.shape[1])) + ((0, 0),) * (arr.ndim - 2),
                                  mode="edge"))


class DiffusersSource:
    """One diffusers checkpoint for one task (text2img | img2img | inpaint). `make()` generates one fake.

    The `diffusers:MODEL` spec makes a text2img one; the online families (OnlineSource) make one each. `share`:
    another DiffusersSource whose captioner, and weights when it is the same checkpoint, this one reuses."""

    kind = "diffusers"

    def __init__(self, model: str, device: str = "auto", steps: int | None = None, guidance: float | None = None,
                 resolution: int | None = None, caption_model: str | None = DEFAULT_CAPTION_MODEL,
                 max_retries: int = 10, match_jpeg: bool = True, spec: str | None = None, family: str | None = None,
                 task: str = "text2img", strength_range: tuple[float, float] = IMG2IMG_STRENGTH,
                 share: "DiffusersSource | None" = None):
        self.model, self.spec = model, spec or f"diffusers:{model}"
        if task not in TASKS:
            raise SourceError(f"fake source {self.spec!r}: unknown task {task!r}; choose from {', '.join(TASKS)}")
        self.task, self.strength_range = task, tuple(float(s) for s in strength_range)
        self.device = resolve_device(device)
        self.family = family or model_family(model)
        self.families = (self.family,)
        self.resolution, self.max_retries, self.match_jpeg = resolution, int(max_retries), match_jpeg
        diffusers = _need("diffusers")
        try:
            config = diffusers.DiffusionPipeline.load_config(model)
        except Exception as e:  # OSError / EnvironmentError: not a model dir, not cached offline, unreachable hub
            raise SourceError(f"fake source {self.spec!r}: cannot read the model config: {type(e).__name__}: {e}") from e
        checkpoint_class = config.get("_class_name", "")
        cls = getattr(diffusers, TASKS[task] or checkpoint_class, None)
        if task == "text2img" and (cls is None or "prompt" not in inspect.signature(cls.__call__).parameters):
            raise SourceError(f"fake source {self.spec!r}: {checkpoint_class or 'unknown pipeline'} is not a "
                              f"text-to-image pipeline this diffusers version knows")
        defaults = PIPELINES.get(checkpoint_class, GENERIC)
        if checkpoint_class not in PIPELINES:
            logger.warning(f"{self.spec}: {checkpoint_class} is not one of {', '.join(PIPELINES)}; "
                           "using generic settings")
        self.steps = int(steps or defaults["steps"])
        self.guidance = float(defaults["guidance"] if guidance is None else guidance)
        dtype = defaults["cuda_dtype"] if self.device.type == "cuda" else torch.float32
        try:
            with warnings.catch_warnings():  # newer diffusers renamed torch_dtype -> dtype; older ones only know torch_dtype
                warnings.simplefilter("ignore", FutureWarning)
                if share is not None and share.model == model:  # same weights, another task: no second copy
                    self.pipe = cls.from_pipe(share.pipe)
                else:
                    self.pipe = cls.from_pretrained(model, torch_dtype=dtype, **defaults["extra"]).to(self.device)
        except Exception as e:
            raise SourceError(f"fake source {self.spec!r}: cannot load {checkpoint_class} for {task}: "
                              f"{type(e).__name__}: {e}") from e
        self.pipeline_class = type(self.pipe).__name__
        self.pipe.set_progress_bar_config(disable=True)
        shared = share.captioner if share is not None else None
        if shared is not None and shared.model_name == caption_model:
            self.captioner = shared  # one captioning model for every family of a source
        else:
            self.captioner = Captioner(caption_model, self.device) if caption_model else None

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "families": [self.family], "model": self.model,
                "task": self.task, "pipeline": self.pipeline_class, "steps": self.steps, "guidance": self.guidance,
                "resolution": self.resolution, "captioner": self.captioner.model_name if self.captioner else None,
                "strength_range": list(self.strength_range) if self.task != "text2img" else None,
                "match_source_jpeg": self.match_jpeg}

    def token_limit(self) -> int:
        """The shortest max length among the pipeline's tokenizers (CLIP: 77; T5 in FLUX: 512)."""
        tokenizers = [getattr(self.pipe, n, None) for n in ("tokenizer", "tokenizer_2", "tokenizer_3")]
        limits = [t.model_max_length for t in tokenizers if t is not None and 0 < getattr(t, "model_max_length", 0) < 100_000]
        return min(limits) if limits else 77

    def truncate(self, prompt: str) -> str:
        """Cut the prompt to what the text encoders read, so long captions never error or get cut silently."""
        tok = getattr(self.pipe, "tokenizer", None)
        if tok is None:
            return prompt
        limit = self.token_limit()
        if len(tok(prompt, truncation=True, max_length=limit + 1)["input_ids"]) <= limit:
            return prompt
        ids = tok(prompt, truncation=True, max_length=limit)["input_ids"]
        return tok.decode(ids, skip_special_tokens=True).strip()

    def prompt_for(self, img: Image.Image | None, rng: np.random.Generator) -> tuple[str, str]:
        caption = self.captioner(img) if (self.captioner is not None and img is not None) else None
        if caption:
            return self.truncate(f"{caption}, a high quality photograph"), "caption"
        return self.truncate(template_prompt(rng)), "template"

    def generate(self, prompt: str, seed: int, size: tuple[int, int] | None = None, steps: int | None = None,
                 **inputs) -> tuple[Image.Image, int]:
        """One image of `size` (w, h) (`inputs`: image=, mask_image=, strength= for img2img / inpaint).
        NaN outputs (fp16 overflow, a known v1 problem) are retried with the next seed."""
        if self.pipe is None:
            raise RuntimeError(f"fake source {self.spec!r} is closed")
        size = size or ((self.resolution, self.resolution) if self.resolution else None)
        takes_size = "height" in inspect.signature(self.pipe.__call__).parameters  # img2img: the image's own size
        dims = {"width": size[0], "height": size[1]} if size and takes_size else {}
        for attempt in range(1, self.max_retries + 1):
            generator = torch.Generator("cpu").manual_seed(seed + attempt - 1)  # CPU: the same noise on any device
            with torch.inference_mode():
                out = self.pipe(prompt=prompt, num_inference_steps=steps or self.steps, guidance_scale=self.guidance,
                                generator=generator, output_type="np", **dims, **inputs)
            arr = np.asarray(out.images[0], dtype=np.float32)
            if np.isfinite(arr).all():
                return Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)), attempt
            logger.warning(f"{self.spec}: NaN in generated image (attempt {attempt}/{self.max_retries}); retrying")
        raise RuntimeError(f"fake source {self.spec!r}: {self.max_retries} attempts all produced NaN images")

    def make(self, photo: Photo, box: tuple[int, int, int, int], rng: np.random.Generator,
             family: str | None = None) -> tuple[Image.Image, dict]:
        """A fake for the window `box` of `photo`, exactly box-sized (cropped, never resized)."""
        w, h = box[2] - box[0], box[3] - box[1]
        window = ensure_min_size(photo.image, max(w, h)).crop(box)
        prompt, prompt_source = self.prompt_for(window, rng)
        seed = int(rng.integers(2 ** 31 - 1 - self.max_retries))
        params = {"family": self.family, "kind": "online", "model": self.model, "task": self.task,
                  "pipeline": self.pipeline_class, "prompt": prompt, "prompt_source": prompt_source, "seed": seed,
                  "steps": self.steps, "guidance": self.guidance}
        if self.task == "text2img":  # a new picture: its content is not the window's, only its size is
            size = None if self.resolution else (_round_up(w), _round_up(w))
            image, params["attempts"] = self.generate(prompt, seed, size=size)
            canvas = ensure_min_size(image, w)
            crop = random_box(rng, canvas.size, w)
            out = canvas.crop(crop)
            params.update(generated_size=list(image.size), crop=list(crop))
        else:  # the window itself, re-generated (img2img) or repainted through a mask (inpaint)
            strength = round(float(rng.uniform(*self.strength_range)), 3)
            padded = (_round_up(w), _round_up(h))
            inputs = {"image": _pad_to(window, *padded), "strength": strength}
            if self.task == "inpaint":
                params["mask"], alpha = sample_mask(rng, (w, h))
                inputs["mask_image"] = _pad_to(Image.fromarray(np.where(alpha > 0, 255, 0).astype(np.uint8)), *padded)
            params["steps"] = max(self.steps, math.ceil(1 / strength))  # diffusers runs int(steps * strength) of them
            image, params["attempts"] = self.generate(prompt, seed, size=padded, steps=params["steps"], **inputs)
            if image.width < w or image.height < h:
                raise RuntimeError(f"fake source {self.spec!r}: {self.pipeline_class} returned {image.size}, "
                                   f"not the {padded} it was given")
            out = image.crop((0, 0, w, h))
            out = composite(window, out, alpha) if self.task == "inpaint" else out
            params.update(strength=strength, generated_size=list(image.size))
        if self.match_jpeg:
            out, params["source_jpeg"] = reencode_like(out, photo, box)
        return out, params

    def close(self) -> None:
        """Drop the pipeline and captioner and hand their GPU memory back."""
        self.pipe = None
        if self.captioner is not None:
            self.captioner.close()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class OnlineSource:
    """The online families of a mix: one DiffusersSource per family, loaded at open (a missing checkpoint fails at
    start-up, not mid-round); families on one checkpoint share its weights, and all share one captioner."""

    kind = "online"

    def __init__(self, families: list[str] | tuple[str, ...], models: dict[str, str] | None = None,
                 spec: str | None = None, **options):
        self.families = tuple(families)
        self.spec = spec or "online:" + ",".join(self.families)
        locations = model_locations(models)
        for name in self.families:
            why = family_status(name, models)
            if why is not None:
                raise SourceError(f"fake source {self.spec!r}: generator family {name!r} is unavailable: {why}")
        self._sources: dict[str, DiffusersSource] = {}
        try:
            for name in self.families:
                info = FAMILIES[name]
                opts = dict(options)
                for key in ("steps", "guidance"):  # the family's own defaults, unless the caller set one
                    if opts.get(key) is None and key in info:
                        opts[key] = info[key]
                share = next((s for s in self._sources.values() if s.model == locations[name]),
                             next(iter(self._sources.values()), None))
                self._sources[name] = DiffusersSource(
                    locations[name], family=name, task=info["task"], spec=f"{self.spec}[{name}]", share=share,
                    strength_range=info.get("strength", IMG2IMG_STRENGTH), **opts)
        except Exception:
            self.close()
            raise

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "families": list(self.families),
                "sources": {name: src.describe() for name, src in self._sources.items()}}

    def make(self, photo: Photo, box: tuple[int, int, int, int], rng: np.random.Generator,
             family: str | None = None) -> tuple[Image.Image, dict]:
        family = family or self.families[int(rng.integers(len(self.families)))]
        if family not in self._sources:
            raise SourceError(f"fake source {self.spec!r}: family {family!r} is not in it ({', '.join(self.families)})")
        return self._sources[family].make(photo, box, rng)

    def close(self) -> None:
        for src in self._sources.values():
            src.close()


def open_source(families, **options) -> OnlineSource:
    return OnlineSource(list(families), **options)
