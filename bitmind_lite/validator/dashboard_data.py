"""What the validator dashboard shows, computed from a validator's state and its challenge log (read-only).

Each function takes the loaded `ValidatorState` and/or the recent `challenges.jsonl` records and returns the JSON one
endpoint of `dashboard.py` answers: the leaderboard, history, accuracy per source and family, latency and invalid
reasons, recent challenges (and their images, rebuilt from the photo pool), and chain status.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from functools import lru_cache
from typing import TYPE_CHECKING, Optional

import numpy as np

from bitmind_lite.validator.reward import metrics
from bitmind_lite.validator.state import MinerRecord, ValidatorState
from bitmind_lite.validator.weights import normalize_scores

if TYPE_CHECKING:  # the log reader lives with the server
    from bitmind_lite.validator.dashboard import ChallengeTail

MAX_POINTS = 400  # per chart series: longer ones are thinned (the newest point is always kept)


class DashboardError(RuntimeError):
    """The state folder cannot be shown as it is; the message says why."""


def _thin(points: list) -> list:
    stride = -(-len(points) // MAX_POINTS)
    return points if stride <= 1 else points[::-1][::stride][::-1]


def _correct(answer: dict, label) -> Optional[bool]:
    p = answer.get("prediction")
    return None if p is None or label is None else (p > 0.5) == bool(label)


def miner_row(uid: int, record: MinerRecord) -> dict:
    """What the validator's state says about one miner: its EMA score and its window of recent answers."""
    valid = record.history.valid()
    m = metrics(record.history)
    hits = sum((p > 0.5) == bool(label) for p, label in valid)
    return {"uid": uid, "hotkey": record.hotkey, "answers": m.answers, "valid": m.valid,
            "accuracy": round(hits / len(valid), 4) if valid else 0.0, "mcc": round(m.mcc, 4),
            "brier": round(m.brier, 4), "score": round(record.score, 6) + 0.0}


def last_set_weights(records) -> Optional[dict]:
    return next((r["weights"] for r in reversed(records) if (r.get("weights") or {}).get("set")), None)


def leaderboard(state: ValidatorState, records) -> list[dict]:
    """One row per uid in the state: score, the share of the next weights it would get, the weight last set (as the
    log recorded it), answer statistics, and its last reward, detector and median latency from the log."""
    weights = normalize_scores(state.scores())
    last_set = (last_set_weights(records) or {}).get("weights", {})
    last: dict[int, dict] = {}
    latencies: dict[int, list] = defaultdict(list)
    for r in records:
        for a in r["miners"]:
            if state.miners.get(a["uid"]) and state.miners[a["uid"]].hotkey == a["hotkey"]:
                last[a["uid"]] = a
                latencies[a["uid"]].append(a["latency"])
    rows = []
    for uid, rec in state.miners.items():
        row = miner_row(uid, rec)
        row.update(weight=round(weights.get(uid, 0.0), 6), weight_set=last_set.get(str(uid)),
                   reward=last.get(uid, {}).get("reward"), detector=last.get(uid, {}).get("detector"),
                   latency_p50=round(float(np.median(latencies[uid])), 4) if latencies[uid] else None)
        rows.append(row)
    return sorted(rows, key=lambda r: (-r["score"], r["uid"]))


def history(records) -> dict:
    """Score per miner at every challenge it answered, the weights each time they were set, and round times."""
    scores: dict[str, list] = defaultdict(list)
    weights: dict[str, list] = defaultdict(list)
    hotkeys: dict[str, str] = {}
    rounds = []
    for r in records:
        t = r.get("time")
        for a in r["miners"]:
            scores[str(a["uid"])].append([t, a["score"], r.get("step")])
            hotkeys[str(a["uid"])] = a["hotkey"]
        w = r.get("weights") or {}
        if w.get("set"):
            for uid in set(scores) | set(w["weights"]):
                weights[uid].append([t, w["weights"].get(uid, 0.0), w["block"]])
        rounds.append([t, r.get("seconds"), r.get("step")])
    return {"score": {k: _thin(v) for k, v in scores.items()}, "weight": {k: _thin(v) for k, v in weights.items()},
            "hotkeys": hotkeys, "round_seconds": _thin(rounds)}


def families(records) -> dict:
    """Accuracy per real source (label 0) and per generator family (label 1), over all miners and per miner."""
    groups: dict[str, dict] = {}
    for r in records:
        label, params = r.get("label"), (r.get("meta") or {}).get("generator_params") or {}
        real = label == 0
        key = f"real:{r.get('source')}" if real else str(r.get("family"))
        g = groups.setdefault(key, {"group": key, "label": label, "source": r.get("source"),
                                    "family": "real" if real else r.get("family"),
                                    "kind": "real" if real else params.get("kind"),
                                    "challenges": 0, "answers": 0, "correct": 0, "per_miner": {}})
        g["challenges"] += 1
        for a in r["miners"]:
            ok = _correct(a, label)
            if ok is None:
                continue
            cell = g["per_miner"].setdefault(str(a["uid"]), {"answers": 0, "correct": 0})
            for c in (g, cell):
                c["answers"] += 1
                c["correct"] += ok
    for g in groups.values():
        for c in (g, *g["per_miner"].values()):
            c["accuracy"] = round(c["correct"] / c["answers"], 4) if c["answers"] else None
    return {"groups": sorted(groups.values(), key=lambda g: (g["label"] != 0, g["kind"] or "", g["group"]))}


def invalid_reason(error: str) -> str:
    """An error message without what varies between occurrences (a host, a port, a quoted value)."""
    head = error.split(": ")[0] if not error.startswith("HTTP ") else error[:8]
    return re.sub(r"'[^']*'", "…", head)


def latency(records) -> dict:
    """Latency percentiles and invalid-answer reasons per miner over the window."""
    per_uid: dict[int, list] = defaultdict(list)
    reasons: dict[str, dict] = {}
    for r in records:
        for a in r["miners"]:
            per_uid[a["uid"]].append(a["latency"])
            if a.get("prediction") is None:
                why = invalid_reason(a.get("error") or "no answer")
                entry = reasons.setdefault(why, {"reason": why, "count": 0, "uids": Counter(), "example": ""})
                entry["count"] += 1
                entry["uids"][str(a["uid"])] += 1
                entry["example"] = a.get("error")
    miners = [{"uid": uid, "answers": len(v), **{f"p{q}": round(float(np.percentile(v, q)), 4) for q in (50, 95)},
               "max": round(max(v), 4)} for uid, v in sorted(per_uid.items())]
    return {"miners": miners, "invalid": sorted(reasons.values(), key=lambda e: -e["count"])}


def challenges(records, limit: int) -> list[dict]:
    """The newest `limit` challenges, newest first, with a thumbnail URL where one can be rebuilt."""
    out = []
    for r in list(records)[-limit:][::-1]:
        meta, label = r.get("meta") or {}, r.get("label")
        shown = _regenerable(meta)
        out.append({**{k: r.get(k) for k in ("step", "time", "label", "source", "family", "seconds", "chain_up")},
                    "level": (r.get("augmentation") or {}).get("level"), "photo": meta.get("photo"),
                    "image": f"api/challenges/{r.get('step')}.png" if shown else None,
                    "image_kind": ("challenge" if label == 0 else "source window") if shown else None,
                    "answers": [{"uid": a["uid"], "prediction": a.get("prediction"), "correct": _correct(a, label),
                                 "latency": a["latency"], "error": a.get("error")} for a in r["miners"]]})
    return out


def chain(state: ValidatorState, meta: dict, tail: ChallengeTail) -> dict:
    records = tail.records
    last = records[-1] if records else {}
    tried = next((r["weights"] for r in reversed(records) if r.get("weights")), None)
    done = last_set_weights(records)
    return {"owner": meta.get("owner"), "step": state.step, "last_weights_block": state.last_weights_block,
            "chain_up": last.get("chain_up"), "last_challenge_time": last.get("time"),
            "last_weights_attempt": tried and {k: tried[k] for k in ("block", "set", "reason")},
            "last_weights_set_logged": done and {"block": done["block"], "uids": len(done["weights"])},
            "rounds_chain_down": sum(not r.get("chain_up", True) for r in records), "window": len(records),
            "log_lines_skipped": tail.skipped}


# ---- challenge images: the state keeps none, so they are rebuilt from what each record says ----
def _regenerable(meta: dict) -> bool:
    spec = str(meta.get("real_source") or "")
    return (spec.startswith(("bundled", "dir:")) and meta.get("photo") is not None and bool(meta.get("window"))
            and bool(meta.get("augmentation")))


@lru_cache(maxsize=8)
def _real_source(spec: str):
    from bitmind_lite.data.sources import open_real_source

    return open_real_source(spec)


def challenge_image(record: dict):
    """A real challenge exactly as it was sent (its photo window with the recorded augmentation applied); for a
    fake, the real window its generator started from (the generated image is not kept, and regenerating it would
    mean running the generator). DashboardError when the photo pool cannot be read here."""
    from bitmind_lite.data.augment import apply, window_side
    from bitmind_lite.data.photo import ensure_min_size

    meta = record.get("meta") or {}
    if not _regenerable(meta):
        raise DashboardError("only challenges from a bundled or dir: photo pool can be shown")
    try:
        photo = _real_source(meta["real_source"]).photo(meta["photo"])
    except Exception as e:  # noqa: BLE001 - a moved dir: pool, say
        raise DashboardError(f"cannot open the photo pool {meta['real_source']!r}: {e}") from None
    if photo is None:
        raise DashboardError(f"photo {meta['photo']!r} is no longer in {meta['real_source']!r}")
    aug = meta["augmentation"]
    window = ensure_min_size(photo.image, window_side(aug["size"])).crop(tuple(meta["window"]))
    return apply(window, aug) if record.get("label") == 0 else window


