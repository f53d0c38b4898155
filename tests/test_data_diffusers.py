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
from bitmind_lite.data.diffusers_source import DiffusersSource  # noqa: E402
from bitmind_lite.data.tiny_pipelines import build_tiny_sd_pipeline  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny pipelines run faster on one thread, and the test machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


# -- the online kind: registered families on hub checkpoints, here pointed at tiny local stand-ins ------------------

from bitmind_lite.data import diffusers_source as online  # noqa: E402
from bitmind_lite.data import families as registry  # noqa: E402
from bitmind_lite.data import semisynthetic as semi  # noqa: E402
from bitmind_lite.data.photo import photo_from_pil  # noqa: E402


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """An offline machine whose Hugging Face cache is an empty temp dir (huggingface_hub read HF_HOME at import,
    so its cache constant is pointed there too)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv(online.MODELS_ENV, raising=False)
    return tmp_path / "hf" / "hub"


@pytest.fixture(scope="module")
def tiny_inpaint(tmp_path_factory):
    return build_tiny_sd_pipeline(tmp_path_factory.mktemp("models") / "tiny-inpaint", task="inpaint")


@pytest.fixture(scope="module")
def online_mix(tiny_sd, tiny_inpaint, tmp_path_factory):
    """`online` as a validator would open it, with sd15 / sd15_img2img / sd_inpaint overridden to the stand-ins
    and the other families (sdxl_turbo, flux_schnell) left on their uncached hub ids."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty-hf-cache")))
        mp.setenv(online.MODELS_ENV, f"sd15={tiny_sd}, sd15_img2img={tiny_sd},sd_inpaint={tiny_inpaint}")
        mix = registry.FamilyMix.from_spec("online", online={"device": "cpu", "steps": 2, "caption_model": None})
        yield mix
        mix.close()


def test_online_families_need_the_local_cache(empty_hf_cache, tmp_path):
    for name, info in online.FAMILIES.items():
        why = registry.get_family(name).status()
        assert why is not None and f"run `hf download {info['source']}` while online" in why, why
        assert "HF_HUB_OFFLINE=1" in why and registry.get_family(name).kind == "online"
    with pytest.raises(SourceError, match="no online family is available"):
        registry.parse_mix("online")
    with pytest.raises(SourceError, match="sdxl_turbo.*hf download stabilityai/sdxl-turbo"):
        registry.parse_mix("sdxl_turbo")
    with pytest.raises(SourceError, match="sd15.*not in the local Hugging Face cache"):
        online.open_source(["sd15"])
    assert not set(online.FAMILIES) & set(registry.parse_mix("offline"))  # never in the offline default


def test_a_cached_checkpoint_is_available(empty_hf_cache, monkeypatch):
    snapshot = empty_hf_cache / "models--some-org--some-model" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    (empty_hf_cache / "models--some-org--some-model" / "refs").mkdir()
    (empty_hf_cache / "models--some-org--some-model" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv(online.MODELS_ENV, "flux_schnell=some-org/some-model")
    assert online.family_status("flux_schnell") is None
    assert online.family_status("sd15") is not None  # the others are still on their (uncached) defaults


def test_model_overrides_are_checked(empty_hf_cache, tmp_path, monkeypatch):
    monkeypatch.setenv(online.MODELS_ENV, "sd15")
    with pytest.raises(SourceError, match=f"{online.MODELS_ENV}.*FAMILY=HUB_ID_OR_DIR"):
        online.model_locations()
    assert online.MODELS_ENV in registry.get_family("sd15").status()  # a bad override: unavailable, no crash
    monkeypatch.setenv(online.MODELS_ENV, f"sd15={tmp_path}")
    assert "no model_index.json" in online.family_status("sd15")
    assert online.family_status("sd15", models={"sd15": "/no/such/dir"}).endswith("(no model_index.json)")
    with pytest.raises(SourceError, match="unknown families"):
        online.model_locations({"sd99": str(tmp_path)})


def test_online_families_on_stand_ins(online_mix, photo, tiny_sd, tiny_inpaint):
    assert set(online_mix.families) == {"sd15", "sd15_img2img", "sd_inpaint"}
    (src,) = online_mix.members()
    assert src.kind == "online"
    assert src.describe()["sources"]["sd_inpaint"]["pipeline"] == "StableDiffusionInpaintPipeline"
    members = src._sources
    assert members["sd15_img2img"].pipe.unet is members["sd15"].pipe.unet  # one checkpoint, one copy of its weights
    box = (40, 20, 40 + 56, 20 + 56)  # 56 is not a multiple of 16: generated at 64, cropped
    for name, pipeline in (("sd15", "StableDiffusionPipeline"), ("sd15_img2img", "StableDiffusionImg2ImgPipeline"),
                           ("sd_inpaint", "StableDiffusionInpaintPipeline")):
        img, params = online_mix.make(photo, box, np.random.default_rng(5), family=name)
        assert img.size == (56, 56) and img.mode == "RGB"
        json.dumps(params)
        assert params["family"] == name and params["kind"] == "online" and params["pipeline"] == pipeline
        assert params["model"] == str(tiny_inpaint if name == "sd_inpaint" else tiny_sd)
        assert params["generated_size"] == [64, 64] and params["attempts"] == 1 and params["prompt"]
        assert {"seed", "steps", "guidance", "task", "prompt_source", "source_jpeg"} <= set(params)
        if name != "sd15":
            lo, hi = online.FAMILIES[name]["strength"]
            assert lo <= params["strength"] <= hi and int(params["steps"] * params["strength"]) >= 1
    assert "mask" in params and params["mask"]["size"] == [56, 56]


def test_inpainting_changes_only_the_masked_region(online_mix, real_photo):
    png = photo_from_pil(real_photo, "skimage/coffee")  # no JPEG history: outside pixels must be exact
    box = (100, 50, 148, 98)
    for seed in range(2):
        img, params = online_mix.make(png, box, np.random.default_rng(seed), family="sd_inpaint")
        diff = np.abs(np.asarray(img, dtype=np.int16) - np.asarray(png.image.crop(box), dtype=np.int16)).max(axis=2)
        alpha = semi.mask_alpha(json.loads(json.dumps(params["mask"])))
        assert diff[alpha == 0].max() == 0 and (diff[semi.shape_mask(params["mask"])] > 0).mean() > 0.9
