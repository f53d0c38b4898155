"""Only a missing state file starts a validator from zero: empty, cut-short or meta-less files are corrupt.

Each bad file must raise StateCorrupt (validator/run.py turns it into a message and exit 2), leave a copy next to
it, and be left exactly as it was found.
"""
import sqlite3
from pathlib import Path

import pytest

from bitmind_lite.validator.state import MinerRecord, StateCorrupt, StateStore, ValidatorState


def saved_state(path: Path) -> None:
    """A real state file with enough miners to span several database pages."""
    store = StateStore.open(path, owner="netuid 1 / me")
    state = ValidatorState(step=9, last_weights_block=77)
    for uid in range(64):
        state.miners[uid] = MinerRecord(f"hk{uid}", 0.01 * uid)
        for i in range(40):
            state.miners[uid].history.record(0.25 if i % 2 else 0.75, i % 2)
    store.save(state)
    store.close()


def empty(path: Path) -> None:
    path.write_bytes(b"")


def truncated(path: Path) -> None:
    saved_state(path)
    data = path.read_bytes()
    assert len(data) > 3 * 4096, "the sample state should span several pages"
    path.write_bytes(data[: len(data) // 2])


def no_meta_table(path: Path) -> None:
    con = sqlite3.connect(path)  # a healthy SQLite file, but not one of ours
    con.execute("CREATE TABLE miners (uid INTEGER PRIMARY KEY, hotkey TEXT, score REAL, history TEXT)")
    con.execute("INSERT INTO miners VALUES (1, 'hk1', 0.5, '[]')")
    con.commit()
    con.close()


def empty_meta_table(path: Path) -> None:
    saved_state(path)
    con = sqlite3.connect(path)
    con.execute("DELETE FROM meta")
    con.commit()
    con.close()


@pytest.mark.parametrize("damage", [empty, truncated, no_meta_table, empty_meta_table], ids=lambda f: f.__name__)
def test_a_bad_state_file_is_an_error_with_a_backup_never_a_fresh_start(tmp_path, damage):
    path = tmp_path / "state.db"
    damage(path)
    before = path.read_bytes()
    with pytest.raises(StateCorrupt) as err:
        StateStore.open(path, owner="netuid 1 / me").load()
    message = str(err.value)
    assert str(path) in message and "corrupt" in message and "Nothing was reset" in message
    backup = err.value.backup
    assert backup is not None and backup.parent == path.parent and backup.name.startswith("state.db.corrupt-")
    assert str(backup) in message and backup.read_bytes() == before
    assert path.read_bytes() == before  # the original is exactly as it was found


def test_the_reason_names_what_is_wrong(tmp_path):
    cases = {"empty": (empty, "empty"), "no_meta": (no_meta_table, "no meta table"),
             "empty_meta": (empty_meta_table, "meta table is empty")}
    for name, (damage, reason) in cases.items():
        path = tmp_path / name / "state.db"
        path.parent.mkdir()
        damage(path)
        with pytest.raises(StateCorrupt, match=reason):
            StateStore.open(path)


def test_a_second_failure_keeps_the_first_backup(tmp_path):
    path = tmp_path / "state.db"
    empty(path)
    backups = []
    for _ in range(2):
        with pytest.raises(StateCorrupt) as err:
            StateStore.open(path)
        backups.append(err.value.backup)
    assert backups[0] != backups[1] and all(b.exists() for b in backups)


def test_only_a_missing_file_is_a_new_state(tmp_path):
    path = tmp_path / "sub" / "state.db"
    path.parent.mkdir()
    (path.parent / "state.db.new").write_bytes(b"left over by a creation that crashed")
    store = StateStore.open(path, owner="netuid 1 / me")
    state = store.load()
    assert state.step == 0 and state.miners == {} and state.last_weights_block is None
    store.save(ValidatorState(step=1))
    store.close()
    again = StateStore.open(path, owner="netuid 1 / me")
    assert again.load().step == 1
    again.close()
    assert sorted(p.name for p in path.parent.iterdir() if "corrupt" in p.name or p.name.endswith(".new")) == []
