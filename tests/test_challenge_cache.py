"""The validator's on-disk challenge pool: caps and oldest-first eviction, serve-once, consistency after kill -9 of
a writer at random moments, the empty-pool fallback, and the filler process (tops up, restarts, dies with its
parent)."""
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from loguru import logger
from PIL import Image

from bitmind_lite.data import ChallengeSampler, SourceError
from bitmind_lite.data.cache import (HEADER, MAGIC, MANIFEST, SUFFIX, CachedSampler, CacheError, ChallengeCache,
                                     SamplerSpec, encode_png)

ROOT = Path(__file__).resolve().parents[1]
SPEC = SamplerSpec(real="bundled", fake="procedural", size=64, device=None)


def noise_png(rng, side=16) -> bytes:
    return encode_png(Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)))


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def check_consistent(root: Path) -> list[dict]:
    """Every manifest entry's file is whole and decodes; no other entry or tmp files lie around."""
    doc = json.loads((root / MANIFEST).read_bytes())
    for e in doc["entries"]:
        data = (root / f"{e['id']}{SUFFIX}").read_bytes()
        assert data.startswith(MAGIC) and len(data) == e["bytes"]
        n = int.from_bytes(data[len(MAGIC):HEADER], "big")
        assert json.loads(data[HEADER:HEADER + n])["label"] == e["label"]
        Image.open(io.BytesIO(data[HEADER + n:])).load()  # raises on a truncated PNG
    listed = {f"{e['id']}{SUFFIX}" for e in doc["entries"]}
    extra = {p.name for p in root.iterdir()} - listed - {MANIFEST, "lock", f"served-{doc['gen']}.log"}
    assert not extra, f"stray files after reconcile: {extra}"
    return doc["entries"]


def test_caps_hold_under_many_adds_and_the_oldest_go_first(tmp_path):
    rng = np.random.default_rng(0)
    pngs = [noise_png(rng, side=int(rng.integers(8, 40))) for _ in range(60)]
    cache = ChallengeCache(tmp_path, max_items=7, max_bytes=6 * len(noise_png(rng, 24)))
    added = []  # (id, file size) in order
    for i, png in enumerate(pngs):
        entry_id = cache.add(png, i % 2, {"label": i % 2, "i": i})
        added.append((entry_id, (tmp_path / f"{entry_id}{SUFFIX}").stat().st_size))
        s = cache.stats()
        assert s["items"] <= 7 and s["bytes"] <= cache.max_bytes
        on_disk = sorted(p.stem for p in tmp_path.glob(f"*{SUFFIX}"))
        assert sum((tmp_path / f"{x}{SUFFIX}").stat().st_size for x in on_disk) == s["bytes"]
        # oldest first: the survivors are the longest run of the newest entries that fits both caps
        expected, total = [], 0
        for entry_id, size in reversed(added):
            if len(expected) == 7 or total + size > cache.max_bytes:
                break
            expected.insert(0, entry_id)
            total += size
        assert [e["id"] for e in check_consistent(tmp_path)] == expected and set(on_disk) == set(expected)
    with pytest.raises(CacheError, match="does not fit"):
        cache.add(b"x" * cache.max_bytes, 1, {})


@pytest.mark.parametrize("max_uses", [1, 2])
def test_take_serves_each_challenge_max_uses_times_exactly_as_sampled(tmp_path, max_uses):
    sampler = ChallengeSampler(fake="procedural", size=64, seed=1)
    made = {}
    cache = ChallengeCache(tmp_path, max_items=10, max_uses=max_uses)
    for _ in range(6):
        image, label, meta = sampler.sample()
        made[cache.add(encode_png(image), label, meta)] = (np.asarray(image), label, json.loads(json.dumps(meta)))
    rng, served = np.random.default_rng(2), []
    for i in range(6 * max_uses):
        if i == 3:  # a validator killed after a take and restarted: what it served stays served
            cache = ChallengeCache(tmp_path, max_items=10, max_uses=max_uses)
        entry = cache.take(rng)
        image, label, meta = made[entry.id]
        assert np.array_equal(np.asarray(entry.image()), image) and entry.image().size == (64, 64)
        assert entry.png == encode_png(entry.image()) and (entry.label, entry.meta) == (label, meta)
        served.append(entry.id)
    assert cache.take(rng) is None
    assert sorted(served) == sorted(list(made) * max_uses)
    cache.add(noise_png(rng), 0, {"label": 0})  # the next add folds the served log: spent files are gone
    assert len(check_consistent(tmp_path)) == 1 and len(list(tmp_path.glob(f"*{SUFFIX}"))) == 1
    lat = cache.take_latency_ms()
    assert lat["n"] == 6 * max_uses - 3 + 1 and 0 < lat["p50"] <= lat["p95"] <= lat["max"]


def test_another_sampler_spec_empties_the_pool(tmp_path):
    rng = np.random.default_rng(3)
    ChallengeCache(tmp_path, tag="a").add(noise_png(rng), 1, {"label": 1})
    assert ChallengeCache(tmp_path, tag="a").stats()["items"] == 1
    assert ChallengeCache(tmp_path, tag="b").stats()["items"] == 0 and check_consistent(tmp_path) == []


WRITER = textwrap.dedent("""
    import os, sys, numpy as np
    from PIL import Image
    from bitmind_lite.data.cache import ChallengeCache, encode_png
    for line in sys.stdin:  # one writer per line, forked so the slow imports happen once
        pid = os.fork()
        if pid:
            print(pid, flush=True)
            os.waitpid(pid, 0)
            continue
        rng = np.random.default_rng(int(line))
        pngs = [encode_png(Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8))) for s in (8, 24, 48)]
        cache = ChallengeCache(sys.argv[1], max_items=6, max_bytes=5 * len(pngs[-1]))
        print("ready", flush=True)
        while True:  # adds, and takes now and then: every write path runs when the SIGKILL lands
            label = int(rng.integers(2))
            cache.add(pngs[int(rng.integers(3))], label, {"label": label, "pad": "x" * int(rng.integers(2000))})
            if rng.random() < 0.3:
                cache.take(rng)
""")


def test_kill_9_of_a_writer_at_random_moments_leaves_a_consistent_cache(tmp_path):
    rng = np.random.default_rng(4)
    forker = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, cwd=ROOT)
    try:
        for round_ in range(10):
            forker.stdin.write(f"{round_}\n".encode())
            forker.stdin.flush()
            writer = int(forker.stdout.readline())
            assert forker.stdout.readline().strip() == b"ready"
            time.sleep(float(rng.uniform(0.02, 0.3)))
            os.kill(writer, signal.SIGKILL)
            wait_for(lambda: _gone(writer), timeout=10, what="the killed writer")
            cache = ChallengeCache(tmp_path, max_items=6, max_bytes=10**6)  # reconciles
            entries = check_consistent(tmp_path)
            assert cache.stats()["items"] == len(entries) and (entries or round_ == 0)
            if entries:  # and it serves
                Image.open(io.BytesIO(cache.take(rng).png)).load()
            cache.close()
    finally:
        forker.kill()
        forker.wait(10)


def test_an_empty_pool_falls_back_to_sampling_with_a_warning(tmp_path):
    warnings = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    try:
        sampler = CachedSampler(tmp_path, SPEC, filler=False)
        image, label, meta = sampler.sample(np.random.default_rng(5))
        png, label2, meta2 = sampler.sample_encoded(np.random.default_rng(6))
    finally:
        logger.remove(sink)
    assert image.size == (64, 64) and label in (0, 1) and meta["label"] == label and meta["cache"] == {"hit": False}
    assert Image.open(io.BytesIO(png)).size == (64, 64) and meta2["label"] == label2
    assert sampler.misses == 2 and sampler.hits == 0 and sum("is empty" in w for w in warnings) == 2
    sampler.close()


def test_the_filler_tops_up_restarts_after_a_crash_and_stops_on_close(tmp_path):
    sampler = CachedSampler(tmp_path, SPEC, max_items=6, log_level="WARNING")
    try:
        wait_for(lambda: sampler.cache.stats()["items"] == 6, what="a full pool")
        rng = np.random.default_rng(7)
        for _ in range(4):
            image, label, meta = sampler.sample(rng)
            assert meta["cache"]["hit"] and image.size == (64, 64) and meta["label"] == label
        wait_for(lambda: sampler.cache.stats()["items"] == 6, what="the pool topped up again")
        time.sleep(0.5)
        assert sampler.cache.stats()["items"] == 6  # paused when full: never past the cap
        first = sampler.filler.proc.pid
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: sampler.filler.restarts == 1 and sampler.filler.alive(), what="a restarted filler")
        assert sampler.filler.proc.pid != first
        sampler.sample(rng)
        wait_for(lambda: sampler.cache.stats()["items"] == 6, what="the restarted filler topping up")
    finally:
        sampler.close()
    assert not sampler.filler.alive()
    check_consistent(tmp_path)


def test_a_spec_the_filler_cannot_build_fails_at_start(tmp_path):
    with pytest.raises(SourceError, match="challenge cache filler"):
        CachedSampler(tmp_path, SamplerSpec(real=f"dir:{tmp_path / 'missing'}", size=64), log_level="ERROR")


PARENT = textwrap.dedent("""
    import sys, time
    from bitmind_lite.data.cache import CachedSampler, SamplerSpec
    if __name__ == "__main__":
        s = CachedSampler(sys.argv[1], SamplerSpec(size=64, device=None), max_items=3, log_level="WARNING")
        print(s.filler.proc.pid, flush=True)
        time.sleep(600)
""")


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in ("Z", "X")  # a zombie is dead
    except FileNotFoundError:
        return True


def test_the_filler_exits_when_its_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"  # spawn re-imports the parent's main module, so it must be a file
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache")], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        filler = int(parent.stdout.readline())
        wait_for(lambda: len(list((tmp_path / "cache").glob(f"*{SUFFIX}"))) == 3, what="the filler's first entries")
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        wait_for(lambda: _gone(filler), timeout=10, what="the orphaned filler to exit")
    finally:
        parent.kill()
