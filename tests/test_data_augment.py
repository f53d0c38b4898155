"""Augmentation levels 0-3: parameters within their level's ranges, recorded, replayable, crop never resize."""
import numpy as np
import pytest
from PIL import Image

from bitmind_lite.data.augment import (DEFAULT_LEVEL_PROBS, LEVELS, MAX_ANGLE, apply, augment, parse_level_probs,
                                       sample_level, sample_params, window_side)

SIZE = 96


@pytest.fixture(scope="module")
def window():
    rng = np.random.default_rng(0)
    side = window_side(SIZE)
    return Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_levels_respect_their_ranges(window, level):
    rng = np.random.default_rng(level)
    ranges = LEVELS[level]
    seen_angles = []
    for _ in range(60):
        img, p = augment(window, rng, SIZE, level=level)
        assert img.size == (SIZE, SIZE) and img.mode == "RGB"
        assert p["level"] == level
        # exactly the operations of this level, nothing more
        ops = set(p) - {"level", "size", "crop", "hflip", "vflip", "noise_seed"}
        assert ops == set(ranges), (level, ops)
        for key, (lo, hi) in ranges.items():
            assert lo <= p[key] <= hi, (key, p[key])
        if level == 0:
            assert p["crop"][0] % 2 == 0 and p["crop"][1] % 2 == 0  # even: the 2x2 grid stays where it was
            assert "hflip" not in p
        else:
            seen_angles.append(p["angle"])
    if level:
        assert max(np.abs(seen_angles)) > MAX_ANGLE / 2  # the range is actually used


def test_level0_is_a_pure_crop(window):
    img, p = augment(window, np.random.default_rng(1), SIZE, level=0)
    x, y = p["crop"]
    assert np.array_equal(np.asarray(img), np.asarray(window)[y:y + SIZE, x:x + SIZE])


def test_rotation_leaves_no_black_corners():
    white = Image.new("RGB", (window_side(SIZE),) * 2, (255, 255, 255))
    rng = np.random.default_rng(2)
    for _ in range(40):
        img, p = augment(white, rng, SIZE, level=1)
        assert np.asarray(img).min() >= 250, p  # any corner of the rotated canvas would be black


def test_same_params_same_output_for_both_classes(window):
    """The builder gives a real and its fake twin one parameter set: post-processing is identical."""
    p = sample_params(np.random.default_rng(3), 3, window.size, SIZE)
    a, b = apply(window, p), apply(window.copy(), p)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    other = dict(p, noise_seed=p["noise_seed"] + 1)
    assert not np.array_equal(np.asarray(apply(window, other)), np.asarray(a))


def test_level_mix_and_parsing():
    probs = parse_level_probs("0:.25,1:.45,2:.15,3:.15")
    assert probs == pytest.approx(DEFAULT_LEVEL_PROBS)
    assert parse_level_probs("0:2,3:2") == {0: 0.5, 3: 0.5}
    rng = np.random.default_rng(4)
    counts = np.bincount([sample_level(rng, probs) for _ in range(4000)], minlength=4) / 4000
    assert counts == pytest.approx([0.25, 0.45, 0.15, 0.15], abs=0.03)
    assert {sample_level(rng, {2: 1.0}) for _ in range(20)} == {2}
    for bad in ("0:.5,4:.5", "x", "0:-1", "0:0", ""):
        with pytest.raises(ValueError, match="level probabilities"):
            parse_level_probs(bad)


def test_bad_inputs(window):
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="level must be 0-3"):
        sample_params(rng, 4, window.size, SIZE)
    with pytest.raises(ValueError, match="smaller than the output size"):
        sample_params(rng, 0, (SIZE - 2, SIZE), SIZE)
