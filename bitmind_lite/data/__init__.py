"""Challenge images: real photo sources, synthetic generators, augmentation levels, and the dataset builder.

    from bitmind_lite.data import ChallengeSampler, sample_challenge, open_real_source, open_fake_source
    image, label, meta = ChallengeSampler(real="bundled", fake="procedural").sample(rng)   # label 1 = AI-generated

CLI: `bitmind-lite data build|sample|sources` (see docs/data.md).
"""
from bitmind_lite.data.augment import DEFAULT_LEVEL_PROBS, LEVELS, augment
from bitmind_lite.data.challenge import ChallengeSampler, sample_challenge
from bitmind_lite.data.photo import Photo, SourceError
from bitmind_lite.data.procedural import FAMILIES
from bitmind_lite.data.sources import open_fake_source, open_real_source

__all__ = ["ChallengeSampler", "sample_challenge", "open_real_source", "open_fake_source", "augment", "LEVELS",
           "DEFAULT_LEVEL_PROBS", "FAMILIES", "Photo", "SourceError"]
