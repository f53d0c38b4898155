"""The bundled NPR weights on freshly sampled validator challenges of every offline generator family.

Not a benchmark (docs/training.md and weights/npr.md hold the real numbers, on held-out photos): a guard that the
shipped checkpoint loads with its calibration and ranks fakes above reals for each family a validator serves by
default, through the very path a validator uses (ChallengeSampler: photo window, generator, augmentation level).
Seeded, so a pass is reproducible; the challenges come from the whole bundled pool, as a default validator's do.
"""
import numpy as np
import pytest

from base_miner.metrics import binary_metrics
from bitmind_lite.data.challenge import ChallengeSampler
from bitmind_lite.data.families import parse_mix
from bitmind_lite.detectors import create_detector

PAIRS = 40  # fake challenges per family (against 2 x PAIRS real ones): AUC standard error about 0.05
MIN_AUC = 0.55  # "beats chance" with a margin: AUC 0.5 is a coin


@pytest.fixture(scope="module")
def detector():
    return create_detector("npr", device="cpu")


@pytest.fixture(scope="module")
def real_scores(detector):
    sampler = ChallengeSampler(fake="nearest", fake_prob=0.0, seed=1234, dedup=False)
    images = [sampler.sample()[0] for _ in range(PAIRS * 2)]
    return detector.predict_images(images)


@pytest.mark.parametrize("family", list(parse_mix("offline")))
def test_bundled_npr_beats_chance_on_every_offline_family(family, detector, real_scores):
    sampler = ChallengeSampler(fake=family, fake_prob=1.0, seed=99, dedup=False)  # same windows for every family
    fakes = []
    for _ in range(PAIRS):
        image, label, meta = sampler.sample()
        assert label == 1 and meta["family"] == family
        fakes.append(image)
    scores = np.array(real_scores + detector.predict_images(fakes))
    labels = np.array([0] * len(real_scores) + [1] * PAIRS)
    m = binary_metrics(labels, scores)
    assert m["auc"] >= MIN_AUC, f"{family}: AUC {m['auc']:.3f} (fake acc {m['f_acc']:.2f}, real acc {m['r_acc']:.2f})"
