"""Challenge sampler: sizes, labels and fake probability, JSON metadata, no repeated source crop."""
import json

import numpy as np
import pytest
from PIL import Image

from bitmind_lite.data import ChallengeSampler, SourceError, sample_challenge
from bitmind_lite.data.procedural import FAMILIES


@pytest.fixture(scope="module")
def sampler():
    return ChallengeSampler(size=128, seed=0)


def test_challenges_are_rgb_labelled_and_recorded(sampler):
    rng = np.random.default_rng(0)
    labels, families, levels = [], set(), set()
    for _ in range(60):
        img, label, meta = sampler.sample(rng)
        assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (128, 128)
        assert label in (0, 1) and meta["label"] == label
        json.dumps(meta)  # JSON-serialisable, as the validator logs it
        assert {"source", "family", "generator_params", "augmentation", "photo", "window"} <= set(meta)
        if label:
            assert meta["family"] in FAMILIES and meta["generator_params"]["family"] == meta["family"]
            assert meta["source"] == "procedural"
        else:
            assert meta["family"] == "real" and meta["generator_params"] is None and meta["source"] == "bundled"
        labels.append(label)
        families.add(meta["family"])
        levels.add(meta["augmentation"]["level"])
    assert 0.3 < np.mean(labels) < 0.7
    assert "real" in families and len(families & set(FAMILIES)) >= 3
    assert levels == {0, 1, 2, 3}


def test_never_the_same_source_crop_twice_in_a_row(sampler):
    rng = np.random.default_rng(1)
    prev = None
    for _ in range(80):
        _, _, meta = sampler.sample(rng)
        assert meta["photo"] != prev  # a different photo each time (the pool has many)
        prev = meta["photo"]


def test_single_photo_source_still_varies_its_crop(tmp_path):
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 255, (200, 220, 3), dtype=np.uint8)).save(tmp_path / "only.png")
    s = ChallengeSampler(real=f"dir:{tmp_path}", size=64, seed=0)
    prev = None
    for _ in range(40):
        _, _, meta = s.sample(rng)
        key = (meta["photo"], tuple(meta["window"]))
        assert key != prev
        prev = key


def test_fake_probability_is_configurable():
    rng = np.random.default_rng(3)
    only_fake = ChallengeSampler(fake_prob=1.0, size=64, level_probs={0: 1.0})
    assert all(only_fake.sample(rng)[1] == 1 for _ in range(10))
    only_real = ChallengeSampler(fake_prob=0.0, size=64)
    assert all(only_real.sample(rng)[1] == 0 for _ in range(10))
    with pytest.raises(ValueError, match="fake_prob"):
        ChallengeSampler(fake_prob=1.5)
    with pytest.raises(ValueError, match="size"):
        ChallengeSampler(size=63)
    with pytest.raises(SourceError, match="unknown real source"):
        ChallengeSampler(real="flickr")


def test_same_rng_same_challenge():
    a = ChallengeSampler(size=64)
    b = ChallengeSampler(size=64)
    for _ in range(5):
        (ia, la, ma), (ib, lb, mb) = a.sample(np.random.default_rng(7)), b.sample(np.random.default_rng(7))
        assert la == lb and ma == mb and np.array_equal(np.asarray(ia), np.asarray(ib))


def test_sample_challenge_default():
    img, label, meta = sample_challenge(np.random.default_rng(4))
    assert img.size == (256, 256) and label in (0, 1) and meta["augmentation"]["size"] == 256


def test_cli_sample_writes_images(tmp_path):
    from bitmind_lite.cli import main

    assert main(["data", "sample", "--out", str(tmp_path), "-n", "6", "--size", "64", "--seed", "1"]) == 0
    lines = (tmp_path / "meta.jsonl").read_text().splitlines()
    assert len(lines) == 6
    for line in lines:
        rec = json.loads(line)
        assert Image.open(tmp_path / rec["file"]).size == (64, 64)


def test_near_duplicates_of_recent_challenges_are_redrawn(tmp_path):
    from bitmind_lite.data.challenge import DEDUP_REDRAWS
    from bitmind_lite.data.phash import hamming, phash

    yy, xx = np.mgrid[0:72, 0:72] / 72.0  # smooth content: a few pixels of shift leave the pHash unchanged
    pixels = np.stack([np.sin(3 * xx + 1) * 0.5 + 0.5, yy, np.cos(2 * xx * yy) * 0.5 + 0.5], -1)
    Image.fromarray((pixels * 255).astype(np.uint8)).save(tmp_path / "only.png")  # one small photo: repeats galore
    tiny = ChallengeSampler(real=f"dir:{tmp_path}", fake="procedural", size=48, level_probs="0:1", seed=0)
    metas = [tiny.sample()[2] for _ in range(6)]
    assert metas[0]["dedup_redraws"] == 0
    assert any(m["dedup_redraws"] > 0 for m in metas[1:])  # it noticed and tried again
    assert all(0 <= m["dedup_redraws"] <= DEDUP_REDRAWS for m in metas)
    plain = ChallengeSampler(real=f"dir:{tmp_path}", fake="procedural", size=48, level_probs="0:1", seed=0,
                             dedup=False)
    assert all(plain.sample()[2]["dedup_redraws"] == 0 for _ in range(3))
    # on the bundled pool, served images that needed no forced repeat are all perceptually distinct
    sampler = ChallengeSampler(size=64, fake="procedural", seed=1)
    served = [sampler.sample() for _ in range(20)]
    hashes = [phash(img) for img, _, m in served if m["dedup_redraws"] < DEDUP_REDRAWS]
    assert min(hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]) > sampler.recent.threshold
