"""`diffusers:MODEL_ID_OR_DIR`: text-to-image fakes from a diffusers pipeline (the online validator's generator).

As in the reference validator: the pipeline class comes from the model's own config (model_index.json), so SD,
SDXL and FLUX-class models all work; the prompt is a caption of the paired real photo when a captioning model is
available (BLIP-style, via transformers) and a template otherwise; it is truncated to the shortest text-encoder
limit (77 CLIP tokens); NaN outputs are retried with a new seed; `close()` releases GPU memory. Unlike the
reference, the pipeline is loaded once and kept (reloading per challenge was v1's main slowness).

diffusers/transformers are optional (`pip install 'bitmind-lite[online]'`) and imported only when used. Hub ids
honour the HF cache and HF_HUB_OFFLINE=1 (an uncached id then fails at once with a clear error).
"""
from __future__ import annotations

import gc
import inspect
import warnings
from pathlib import Path

import numpy as np
import torch
from loguru import logger
from PIL import Image

from bitmind_lite.data.photo import Photo, SourceError, ensure_min_size, random_box, reencode_like
from bitmind_lite.detectors.base import resolve_device

# Per pipeline class: defaults from the reference validator / model cards, and constructor extras.
PIPELINES = {
    "StableDiffusionPipeline": {
        "steps": 30, "guidance": 7.5, "cuda_dtype": torch.float16,
        "extra": {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}},
    "StableDiffusionXLPipeline": {
        "steps": 30, "guidance": 7.0, "cuda_dtype": torch.float16, "extra": {"add_watermarker": False}},
    "FluxPipeline": {"steps": 28, "guidance": 3.5, "cuda_dtype": torch.bfloat16, "extra": {}},
}
GENERIC = {"steps": 30, "guidance": 5.0, "cuda_dtype": torch.float16, "extra": {}}
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


class DiffusersSource:
    """Fake source `diffusers:MODEL_ID_OR_DIR`. `make()` generates one image and crops a window from it."""

    kind = "diffusers"

    def __init__(self, model: str, device: str = "auto", steps: int | None = None, guidance: float | None = None,
                 resolution: int | None = None, caption_model: str | None = DEFAULT_CAPTION_MODEL,
                 max_retries: int = 10, match_jpeg: bool = True, spec: str | None = None):
        self.model, self.spec = model, spec or f"diffusers:{model}"
        self.device = resolve_device(device)
        self.family = model_family(model)
        self.families = (self.family,)
        self.resolution, self.max_retries, self.match_jpeg = resolution, int(max_retries), match_jpeg
        diffusers = _need("diffusers")
        try:
            config = diffusers.DiffusionPipeline.load_config(model)
        except Exception as e:  # OSError / EnvironmentError: not a model dir, not cached offline, unreachable hub
            raise SourceError(f"fake source {self.spec!r}: cannot read the model config: {type(e).__name__}: {e}") from e
        self.pipeline_class = config.get("_class_name", "")
        cls = getattr(diffusers, self.pipeline_class, None)
        if cls is None or "prompt" not in inspect.signature(cls.__call__).parameters:
            raise SourceError(f"fake source {self.spec!r}: {self.pipeline_class or 'unknown pipeline'} is not a "
                              f"text-to-image pipeline this diffusers version knows")
        defaults = PIPELINES.get(self.pipeline_class, GENERIC)
        if self.pipeline_class not in PIPELINES:
            logger.warning(f"{self.spec}: {self.pipeline_class} is not one of {', '.join(PIPELINES)}; "
                           "using generic settings")
        self.steps = int(steps or defaults["steps"])
        self.guidance = float(defaults["guidance"] if guidance is None else guidance)
        dtype = defaults["cuda_dtype"] if self.device.type == "cuda" else torch.float32
        try:
            with warnings.catch_warnings():  # newer diffusers renamed torch_dtype -> dtype; older ones only know torch_dtype
                warnings.simplefilter("ignore", FutureWarning)
                self.pipe = cls.from_pretrained(model, torch_dtype=dtype, **defaults["extra"]).to(self.device)
        except Exception as e:
            raise SourceError(f"fake source {self.spec!r}: cannot load {self.pipeline_class}: "
                              f"{type(e).__name__}: {e}") from e
        self.pipe.set_progress_bar_config(disable=True)
        self.captioner = Captioner(caption_model, self.device) if caption_model else None

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "families": [self.family], "model": self.model,
                "pipeline": self.pipeline_class, "steps": self.steps, "guidance": self.guidance,
                "resolution": self.resolution, "captioner": self.captioner.model_name if self.captioner else None,
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

    def generate(self, prompt: str, seed: int) -> tuple[Image.Image, int]:
        """One image; NaN outputs (fp16 overflow, a known v1 problem) are retried with the next seed."""
        if self.pipe is None:
            raise RuntimeError(f"fake source {self.spec!r} is closed")
        size = {"height": self.resolution, "width": self.resolution} if self.resolution else {}
        for attempt in range(1, self.max_retries + 1):
            generator = torch.Generator("cpu").manual_seed(seed + attempt - 1)  # CPU generator: same noise on any device
            with torch.inference_mode():
                out = self.pipe(prompt=prompt, num_inference_steps=self.steps, guidance_scale=self.guidance,
                                generator=generator, output_type="np", **size)
            arr = np.asarray(out.images[0], dtype=np.float32)
            if np.isfinite(arr).all():
                return Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)), attempt
            logger.warning(f"{self.spec}: NaN in generated image (attempt {attempt}/{self.max_retries}); retrying")
        raise RuntimeError(f"fake source {self.spec!r}: {self.max_retries} attempts all produced NaN images")

    def make(self, photo: Photo, box: tuple[int, int, int, int], rng: np.random.Generator,
             family: str | None = None) -> tuple[Image.Image, dict]:
        """A generated fake prompted from `photo` (caption) or a template, cropped to the box's size (never resized)."""
        side = box[2] - box[0]
        prompt, prompt_source = self.prompt_for(photo.image.crop(box), rng)
        seed = int(rng.integers(2 ** 31 - 1 - self.max_retries))
        image, attempts = self.generate(prompt, seed)
        canvas = ensure_min_size(image, side)
        crop = random_box(rng, canvas.size, side)
        out = canvas.crop(crop)
        params = {"family": self.family, "model": self.model, "pipeline": self.pipeline_class, "prompt": prompt,
                  "prompt_source": prompt_source, "seed": seed, "attempts": attempts, "steps": self.steps,
                  "guidance": self.guidance, "generated_size": list(image.size), "crop": list(crop)}
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


def build_tiny_sd_pipeline(path: str | Path, seed: int = 0) -> Path:
    """Write a ~1 M-parameter, randomly initialised StableDiffusionPipeline to `path`, with no network.

    It draws coloured noise; its use is exercising the `diffusers:` code path offline (tests, demos, CI).
    The tokenizer is built in memory: 256 byte-level symbols (+ '</w>' forms), no merges, 77 tokens max.
    """
    diffusers, transformers = _need("diffusers"), _need("transformers")
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=64)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=520,
        max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513, projection_dim=32))
    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"])}
    tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    scheduler = diffusers.DDIMScheduler(steps_offset=1, clip_sample=False, set_alpha_to_one=False)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.save_pretrained(str(path))
    return Path(path)
