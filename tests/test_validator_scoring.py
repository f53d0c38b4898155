"""Reward, EMA scores, weight normalisation and the state file: the validator's arithmetic and memory."""
import math
import sqlite3

import numpy as np
import pytest

from bitmind_lite.validator.reward import MIN_VALID, WINDOW, History, challenge_reward, metrics, reward
from bitmind_lite.validator.scores import sync_with_metagraph, update_scores
from bitmind_lite.validator.state import MinerRecord, StateCorrupt, StateError, StateStore, ValidatorState
from bitmind_lite.validator.weights import normalize_scores


def _history(labels, predict) -> History:
    h = History()
    for label in labels:
        h.record(predict(label), label)
    return h


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_perfect_beats_random_beats_inverted(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, WINDOW).tolist()
    perfect = reward(_history(labels, lambda y: 0.9 if y else 0.1))
    random_ = reward(_history(labels, lambda y: float(rng.random())))
    coin = reward(_history(labels, lambda y: 0.5))
    inverted = reward(_history(labels, lambda y: 0.1 if y else 0.9))
    assert perfect > random_ > inverted
    assert perfect > coin > inverted
    assert perfect > 0.9 and inverted <= 0.0


def test_calibration_prefers_honest_confidence_among_equally_accurate_miners():
    labels = [0, 1] * 50
    confident = reward(_history(labels, lambda y: 0.95 if y else 0.05))
    hedging = reward(_history(labels, lambda y: 0.55 if y else 0.45))
    assert metrics(_history(labels, lambda y: 0.55 if y else 0.45)).mcc == pytest.approx(1.0)
    assert confident > hedging > 0


def test_invalid_answers_scale_the_reward_down():
    labels = [0, 1] * 20
    clean = _history(labels, lambda y: 0.8 if y else 0.2)
    base = reward(clean)
    previous = base
    for k in range(1, 6):
        h = History(clean.answers)
        for _ in range(k):
            h.record(None, 1)
        r = reward(h)
        assert r == pytest.approx(base * len(labels) / (len(labels) + k))  # same valid answers, k invalid ones
        assert r < previous
        previous = r


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), -1.0, 2.0, "abc", True])
def test_an_invalid_answer_scores_zero_for_that_challenge_even_with_a_perfect_record(bad):
    h = _history([0, 1] * 10, lambda y: float(y))
    assert reward(h) > 0.9
    r, m = challenge_reward(h, bad, 1)
    assert r == 0.0
    assert h.answers[-1] == (None, 1)  # recorded as invalid
    assert m.valid == 20 and m.answers == 21


def test_no_reward_before_min_valid_answers():
    h = History()
    for i in range(MIN_VALID - 1):
        r, _ = challenge_reward(h, 1.0, 1)
        assert r == 0.0, f"rewarded after {i + 1} answers"
    for _ in range(3):  # invalid answers do not count towards the minimum
        challenge_reward(h, None, 0)
    assert challenge_reward(h, float("nan"), 0)[0] == 0.0
    r, m = challenge_reward(h, 0.0, 0)
    assert m.valid == MIN_VALID and r > 0.0


def test_history_keeps_the_last_window_answers_only():
    h = History()
    for i in range(WINDOW + 30):
        h.record(None if i < 30 else 1.0, 1)  # the 30 invalid answers fall out of the window
    assert len(h) == WINDOW and len(h.valid()) == WINDOW
    assert History.from_list(h.to_list()).answers == h.answers


def test_one_class_window_is_handled():
    m = metrics(_history([1] * 20, lambda y: 0.9))
    assert m.mcc == 0.0 and m.accuracy == 1.0 and math.isfinite(m.reward) and m.reward > 0


# ---- scores ----
def test_hotkey_change_resets_history_and_score():
    state = ValidatorState()
    sync_with_metagraph(state, {0: "hk-a", 1: "hk-b"})
    for _ in range(10):
        challenge_reward(state.miners[1].history, 1.0, 1)
    update_scores(state, {1: 0.8}, alpha=0.5)
    assert state.miners[1].score > 0 and len(state.miners[1].history) == 10
    events = sync_with_metagraph(state, {0: "hk-a", 1: "hk-new", 2: "hk-c"})
    assert state.miners[1].hotkey == "hk-new" and state.miners[1].score == 0.0 and len(state.miners[1].history) == 0
    assert 2 in state.miners and any("uid 1 changed hotkey" in e for e in events)
    sync_with_metagraph(state, {0: "hk-a"})  # the metagraph shrinks
    assert set(state.miners) == {0}


def test_ema_never_lets_nan_in():
    state = ValidatorState(miners={u: MinerRecord(f"hk{u}") for u in range(5)})
    state.miners[4].score = float("nan")  # even a NaN that slipped in before is flushed
    for step in range(50):
        update_scores(state, {0: 1.0, 1: float("nan"), 2: float("inf"), 3: -float("inf"), 4: 0.5, 99: 1.0},
                      alpha=0.1)
    scores = state.scores()
    assert all(math.isfinite(s) for s in scores.values())
    assert scores[0] == pytest.approx(1 - 0.9 ** 50) and scores[1] == scores[2] == scores[3] == 0.0
    assert 99 not in scores  # an unknown uid is not invented


def test_idle_miners_decay_and_challenged_ones_move_towards_their_reward():
    state = ValidatorState(miners={0: MinerRecord("a", 0.5), 1: MinerRecord("b", 0.5), 2: MinerRecord("c", 0.5)})
    update_scores(state, {0: 1.0}, alpha=0.2, idle={1})
    assert state.miners[0].score == pytest.approx(0.6)
    assert state.miners[1].score == pytest.approx(0.4)
    assert state.miners[2].score == 0.5  # neither challenged nor idle (not sampled this round): unchanged


def test_normalize_scores():
    w = normalize_scores({0: 0.3, 1: -0.2, 2: 0.1, 3: float("nan"), 4: 0.0})
    assert set(w) == {0, 2} and sum(w.values()) == pytest.approx(1.0) and w[0] == pytest.approx(0.75)
    assert normalize_scores({0: 0.0, 1: -1.0}) == {}


# ---- state file ----
def _sample_state() -> ValidatorState:
    state = ValidatorState(step=7, last_weights_block=1234)
    for uid in range(3):
        state.miners[uid] = MinerRecord(f"hk{uid}", 0.1 * uid)
        for i in range(12):
            state.miners[uid].history.record(None if i % 5 == 0 else (i % 3) / 2, i % 2)
    return state


def test_state_round_trip(tmp_path):
    path = tmp_path / "state.db"
    store = StateStore.open(path, owner="netuid 1 / me")
    state = _sample_state()
    store.save(state)
    store.close()
    again = StateStore.open(path, owner="netuid 1 / me").load()
    assert again.step == 7 and again.last_weights_block == 1234
    assert again.scores() == state.scores()
    assert {u: m.history.to_list() for u, m in again.miners.items()} == \
        {u: m.history.to_list() for u, m in state.miners.items()}
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(StateError, match="belongs to"):
        StateStore.open(path, owner="netuid 2 / someone else")


@pytest.mark.parametrize("damage", ["garbage", "bad_score", "bad_history"])
def test_corrupt_state_is_an_error_with_a_backup_never_a_reset(tmp_path, damage):
    path = tmp_path / "state.db"
    store = StateStore.open(path)
    store.save(_sample_state())
    store.close()
    if damage == "garbage":
        for side in ("-wal", "-shm"):
            (tmp_path / f"state.db{side}").unlink(missing_ok=True)
        data = bytearray(path.read_bytes())
        data[:100] = b"\x13" * 100  # the header is gone: SQLite no longer recognises the file
        path.write_bytes(bytes(data))
    else:
        con = sqlite3.connect(path)
        column, value = ("score", "'lots'") if damage == "bad_score" else ("history", "'[[0.5'")
        con.execute(f"UPDATE miners SET {column}={value} WHERE uid=1")
        con.commit()
        con.close()
    before = path.read_bytes()
    with pytest.raises(StateCorrupt) as err:
        StateStore.open(path).load()
    assert "corrupt" in str(err.value) and str(err.value.backup) in str(err.value)
    assert err.value.backup.exists() and err.value.backup.read_bytes()[:100] == before[:100]
    assert path.read_bytes()[:100] == before[:100]  # the original is left alone
