"""Tiny, randomly initialised Stable Diffusion pipelines written with no network: stand-ins for real checkpoints
so the diffusers code paths (online families, `diffusers:DIR`) run offline in tests, demos and CI."""
from __future__ import annotations

from pathlib import Path

import torch

from bitmind_lite.data.diffusers_source import _need


def build_tiny_sd_pipeline(path: str | Path, seed: int = 0, task: str = "text2img") -> Path:
    """Write a ~1 M-parameter, randomly initialised Stable Diffusion pipeline for `task` (text2img | img2img |
    inpaint) to `path`, with no network.

    It draws coloured noise; its use is exercising the diffusers code paths offline (tests, demos, CI).
    The tokenizer is built in memory: 256 byte-level symbols (+ '</w>' forms), no merges, 77 tokens max.
    An inpainting UNet reads 9 channels: 4 noisy latents + 1 mask + 4 latents of the masked image.
    """
    diffusers, transformers = _need("diffusers"), _need("transformers")
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    classes = {"text2img": "StableDiffusionPipeline", "img2img": "StableDiffusionImg2ImgPipeline",
               "inpaint": "StableDiffusionInpaintPipeline"}
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=9 if task == "inpaint" else 4,
        out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=4,
        norm_num_groups=8)
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
    pipe = getattr(diffusers, classes[task])(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.save_pretrained(str(path))
    return Path(path)
