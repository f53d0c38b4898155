"""The generator family registry: mix specs, weights, unavailable families, the CLI, and the builder's shares."""
import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from bitmind_lite.data import families as fam
from bitmind_lite.data.builder import BuildConfig, Builder
from bitmind_lite.data.photo import SourceError
from bitmind_lite.data.real import open_real_source
from bitmind_lite.data.sources import open_fake_source


def test_registry_lists_every_kind_with_unique_names():
    families = fam.all_families()
    assert {"nearest", "bilinear", "bicubic", "transposed", "pixelshuffle"} <= set(families)
    for f in families.values():
        assert f.kind in fam.KINDS and f.name and f.description
        row = f.as_dict()
        assert row["status"] == "available" or row["status"].startswith("unavailable: ")


def test_parse_mix_weights_kinds_and_names():
    w = fam.parse_mix("procedural=3,nearest")
    assert sum(w.values()) == pytest.approx(1.0)
    # procedural=3 shares 3 over its five families, nearest gets 1 more: 0.6 + 1 of 4
    assert w["nearest"] == pytest.approx((3 / 5 + 1) / 4)
    assert w["bilinear"] == pytest.approx((3 / 5) / 4)
    offline = fam.parse_mix("offline")
    available = {f.name for f in fam.all_families().values()
                 if f.kind in fam.OFFLINE_DEFAULT_KINDS and f.status() is None}
    assert set(offline) == available and {"nearest", "pixelshuffle"} <= set(offline)


@pytest.mark.parametrize("spec,needle", [("nope", "'nope'"), ("nearest=0", "must be > 0"),
                                         ("nearest=abc", "must be a number"), ("", "non-empty"),
                                         ("bilinear,nearest=-1", "must be > 0")])
def test_bad_mix_is_a_clear_error(spec, needle):
    with pytest.raises(SourceError, match=needle):
        fam.parse_mix(spec)


def test_unavailable_family_names_itself_and_why(monkeypatch):
    from bitmind_lite.data import procedural

    monkeypatch.setattr(procedural, "family_status",
                        lambda name: "weights missing: run X" if name == "bicubic" else None)
    with pytest.raises(SourceError, match="'bicubic' is unavailable: weights missing: run X"):
        fam.parse_mix("bicubic")
    assert "bicubic" not in fam.parse_mix("procedural")  # a kind expands to the available ones only


def test_broken_provider_makes_families_unavailable_not_a_crash(monkeypatch):
    from bitmind_lite.data import procedural

    def boom(name):
        raise RuntimeError("libfoo.so missing")

    monkeypatch.setattr(procedural, "family_status", boom)
    assert "libfoo.so missing" in fam.get_family("nearest").as_dict()["status"]
    with pytest.raises(SourceError, match="no procedural family is available"):
        fam.parse_mix("procedural")


def test_mix_follows_its_weights_and_records_the_family():
    mix = open_fake_source("nearest=4,transposed")
    assert mix.kind == "mix" and set(mix.families) == {"nearest", "transposed"}
    rng = np.random.default_rng(0)
    picks = Counter(mix.pick(rng) for _ in range(2000))
    assert 0.75 < picks["nearest"] / 2000 < 0.85
    photos = open_real_source("bundled")
    photo = photos.photo(photos.ids()[0])
    img, params = mix.make(photo, (0, 0, 64, 64), rng, family="transposed")
    assert img.size == (64, 64) and params["family"] == "transposed" and params["kind"] == "procedural"
    with pytest.raises(SourceError, match="not in this mix"):
        mix.make(photo, (0, 0, 64, 64), rng, family="bicubic")
    assert mix.describe()["weights"]["nearest"] == pytest.approx(0.8)
    mix.close()


def test_builder_gives_each_family_its_weighted_share(tmp_path):
    cfg = BuildConfig(out=str(tmp_path), train=100, val=10, test_per_family=2, fake=[],
                      families="nearest=3,bilinear,bicubic", size=64)
    b = Builder(cfg)
    try:
        counts = b._counts("train")
        assert counts == {"nearest": 60, "bilinear": 20, "bicubic": 20}
        assert sum(b._counts("val").values()) == 10
        assert set(b._counts("test")) == {"nearest", "bilinear", "bicubic", "real_holdout"}
    finally:
        b.close()


def _data_cli(*args):
    return subprocess.run([sys.executable, "-m", "bitmind_lite.cli", "data", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_families_lists_kinds_and_status():
    r = _data_cli("families", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["nearest"]["kind"] == "procedural" and rows["nearest"]["status"] == "available"
    r = _data_cli("families")
    assert r.returncode == 0 and "nearest" in r.stdout and "families available" in r.stderr


def test_cli_build_with_a_bad_family_exits_2_naming_it(tmp_path):
    r = _data_cli("build", "--out", str(tmp_path / "ds"), "--families", "nearest,gan9000", "--quiet")
    assert r.returncode == 2 and "gan9000" in r.stderr and "Traceback" not in r.stderr
