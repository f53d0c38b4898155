"""diffusers source, offline: a tiny randomly initialised StableDiffusionPipeline saved to a temp dir (it draws
noise; these tests check the plumbing: class from config, prompts, truncation, NaN retry, release, builder)."""
import json
import time
import weakref

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from bitmind_lite.data import ChallengeSampler, SourceError, open_fake_source, open_real_source  # noqa: E402
from bitmind_lite.data.builder import BuildConfig, build_dataset  # noqa: E402
from bitmind_lite.data.diffusers_source import DiffusersSource, build_tiny_sd_pipeline  # noqa: E402


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return build_tiny_sd_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="module")
def source(tiny_sd):
    src = open_fake_source(f"diffusers:{tiny_sd}", device="cpu", steps=2, caption_model=None, resolution=48)
    yield src
    src.close()


@pytest.fixture(scope="module")
def photo():
    return open_real_source("bundled").photo("sklearn/china")  # a JPEG: the fake gets its compression history


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    """A randomly initialised BLIP captioner with a 15-word vocabulary (its captions are word salad)."""
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    root = tmp_path_factory.mktemp("blip")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photograph", "of", "cat", "dog", "the", "on",
             "grass", "red", "boat"]
    (root / "vocab.txt").write_text("\n".join(words) + "\n")
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=BertTokenizer(str(root / "vocab.txt")))
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1)
    config = BlipConfig(text_config=dict(vocab_size=len(words), max_position_embeddings=64, bos_token_id=2,
                                         sep_token_id=3, pad_token_id=0, **small),
                        vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=32)
    BlipForConditionalGeneration(config).save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return root / "model"


def test_pipeline_class_from_config_and_fake_of_requested_size(source, photo):
    assert isinstance(source, DiffusersSource) and source.pipeline_class == "StableDiffusionPipeline"
    assert source.family == "diffusers-tiny-sd" and source.families == ("diffusers-tiny-sd",)
    box = (40, 20, 40 + 40, 20 + 40)
    img, params = source.make(photo, box, np.random.default_rng(0))
    assert img.mode == "RGB" and img.size == (40, 40)
    assert params["generated_size"] == [48, 48] and params["prompt_source"] == "template"
    assert params["attempts"] == 1 and params["source_jpeg"]["grid_phase"] == [40 % 16, 20 % 16]
    json.dumps(params)
    again, params2 = source.make(photo, box, np.random.default_rng(0))  # same rng -> same prompt, seed, pixels
    assert params2 == params and np.array_equal(np.asarray(again), np.asarray(img))


def test_prompt_truncated_to_text_encoder_limit(source):
    long_prompt = " ".join(["a very detailed photograph of a red boat on a calm lake"] * 30)
    short = source.truncate(long_prompt)
    assert source.token_limit() == 77
    assert len(source.pipe.tokenizer(short)["input_ids"]) <= 77 < len(source.pipe.tokenizer(long_prompt)["input_ids"])
    assert long_prompt.startswith(short[:40])
    assert source.truncate("a cat") == "a cat"


def test_nan_outputs_are_retried(source):
    decode = source.pipe.vae.decode
    nan_calls = {"left": 1}

    def nan_once(*args, **kwargs):  # fault injection: the first decode overflows to NaN, as fp16 SD sometimes does
        out = decode(*args, **kwargs)
        if nan_calls["left"] > 0:
            nan_calls["left"] -= 1
            out[0].fill_(float("nan"))
        return out

    source.pipe.vae.decode = nan_once
    try:
        img, attempts = source.generate("a cat", seed=1)
        assert attempts == 2 and np.isfinite(np.asarray(img, dtype=np.float32)).all()
        nan_calls["left"] = 10 ** 6  # now every attempt is NaN: a clear error after max_retries, never an endless loop
        source.max_retries = 3
        with pytest.raises(RuntimeError, match="3 attempts all produced NaN"):
            source.generate("a cat", seed=1)
    finally:
        source.pipe.vae.decode = decode
        source.max_retries = 10


def test_captions_become_prompts(tiny_sd, tiny_blip, photo):
    src = DiffusersSource(str(tiny_sd), device="cpu", steps=1, caption_model=str(tiny_blip), resolution=32)
    _, params = src.make(photo, (0, 0, 32, 32), np.random.default_rng(1))
    assert params["prompt_source"] == "caption" and params["prompt"].startswith("a photograph of")
    src.close()


def test_unavailable_captioner_falls_back_to_templates(tiny_sd, photo, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = DiffusersSource(str(tiny_sd), device="cpu", steps=1, caption_model="no-such-org/no-such-captioner",
                          resolution=32)
    t = time.monotonic()
    _, params = src.make(photo, (0, 0, 32, 32), np.random.default_rng(2))
    assert params["prompt_source"] == "template" and src.captioner.available is False
    assert time.monotonic() - t < 20
    src.close()


def test_close_releases_the_pipeline(tiny_sd, photo):
    src = DiffusersSource(str(tiny_sd), device="cpu", steps=1, caption_model=None, resolution=32)
    unet = weakref.ref(src.pipe.unet)
    src.close()
    assert unet() is None  # nothing keeps the weights alive (on CUDA, empty_cache then frees the memory)
    with pytest.raises(RuntimeError, match="closed"):
        src.make(photo, (0, 0, 32, 32), np.random.default_rng(0))


def test_bad_models_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceError, match="diffusers:no-such-org/no-such-model"):
        open_fake_source("diffusers:no-such-org/no-such-model")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    with pytest.raises(SourceError, match="not a text-to-image pipeline"):
        open_fake_source(f"diffusers:{tmp_path}")


def test_sampler_and_builder_use_diffusers_fakes(tiny_sd, source, tmp_path):
    sampler = ChallengeSampler(fake=[source], fake_prob=1.0, size=48, level_probs={2: 1.0})
    img, label, meta = sampler.sample(np.random.default_rng(3))
    assert label == 1 and img.size == (48, 48) and meta["family"] == "diffusers-tiny-sd"
    manifest = build_dataset(BuildConfig(out=str(tmp_path / "ds"), train=2, val=0, test_per_family=1, size=48,
                                         real=["bundled"], fake=["procedural:nearest", f"diffusers:{tiny_sd}"],
                                         fake_options={"device": "cpu", "steps": 1, "caption_model": None}),
                             progress=False, workers=2)
    assert manifest["classes"]["train"] == ["nearest", "diffusers-tiny-sd"]
    for split, cls in (("train", "diffusers-tiny-sd"), ("test", "diffusers-tiny-sd"), ("test", "nearest")):
        assert (tmp_path / "ds" / split / cls / "1_fake" / "00000.png").exists()
    assert manifest["fake_sources"][1]["pipeline"] == "StableDiffusionPipeline"
