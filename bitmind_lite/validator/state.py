"""What a validator must not forget across restarts, kept in SQLite (WAL) and written once per challenge.

Each `save` is one transaction, so a `kill -9` at any moment leaves either the previous challenge's state or this
one's, never a mix. Only a missing file means "new validator". A file that is empty, that SQLite cannot read, that
has no (or an empty) meta table, or whose contents do not make sense, is never silently reset: `StateStore.open` /
`load` copy it aside (STATE.corrupt-<time>, the original left as it was) and raise `StateCorrupt` naming both.
"""
from __future__ import annotations

import json
import math
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from bitmind_lite.validator.reward import WINDOW, History

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE miners (
    uid INTEGER PRIMARY KEY,
    hotkey TEXT NOT NULL,
    score REAL NOT NULL,
    history TEXT NOT NULL            -- JSON [[prediction or null, label], ...], oldest first
);
"""


class StateError(RuntimeError):
    """The state file cannot be used as it is; the message says what to do."""


class StateCorrupt(StateError):
    def __init__(self, path: Path, backup: Optional[Path], reason: str):
        self.path, self.backup, self.reason = path, backup, reason
        kept = f"a copy was saved to {backup}" if backup else "no copy could be made"
        super().__init__(f"validator state {path} is corrupt ({reason}); {kept}. Nothing was reset: move the file "
                         f"aside to start from zero scores, or restore a backup.")


@dataclass
class MinerRecord:
    hotkey: str
    score: float = 0.0
    history: History = field(default_factory=History)


@dataclass
class ValidatorState:
    step: int = 0  # challenges completed
    last_weights_block: Optional[int] = None  # block of the last successful set_weights
    miners: dict[int, MinerRecord] = field(default_factory=dict)

    def scores(self) -> dict[int, float]:
        return {uid: m.score for uid, m in self.miners.items()}


class StateStore:
    """`open(path, owner)` -> store; `load()` -> ValidatorState; `save(state)` in one transaction."""

    def __init__(self, path: Path, conn: sqlite3.Connection):
        self.path, self._conn = path, conn

    @classmethod
    def open(cls, path: str | Path, owner: str = "") -> "StateStore":
        """Open or create the database. `owner` (e.g. "netuid 1 / <hotkey>") guards against mixing validators.

        Only a missing file starts fresh, and a new file appears complete or not at all. An existing one must be a
        state database (SQLite, a non-empty meta table) before anything writes to it, so a bad file is copied aside
        exactly as it was found.
        """
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            _create(path, owner)
        if path.stat().st_size == 0:
            raise StateCorrupt(path, _backup(path), "the file is empty (0 bytes)")
        conn = None
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            check_state_file(conn)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against process crashes
        except (sqlite3.DatabaseError, ValueError) as e:
            if conn is not None:
                conn.close()
            raise StateCorrupt(path, _backup(path), str(e)) from None
        store = cls(path, conn)
        meta = store._meta()
        if meta.get("schema") != str(SCHEMA_VERSION):
            conn.close()
            raise StateCorrupt(path, _backup(path), f"schema version {meta.get('schema')!r}, expected {SCHEMA_VERSION}")
        if owner and meta.get("owner") and meta["owner"] != owner:
            conn.close()
            raise StateError(f"validator state {path} belongs to {meta['owner']!r}, not {owner!r}; "
                             f"use another --neuron.state_dir")
        return store

    def _meta(self) -> dict[str, str]:
        return dict(self._conn.execute("SELECT key, value FROM meta").fetchall())

    def _transaction(self):
        return _Transaction(self._conn)

    def load(self) -> ValidatorState:
        """Read the state back; anything that does not parse is corruption, reported with a backup copy."""
        try:
            return state_from_db(self._conn)
        except (sqlite3.DatabaseError, ValueError, TypeError, KeyError) as e:
            raise StateCorrupt(self.path, _backup(self.path), str(e)) from None

    def save(self, state: ValidatorState) -> None:
        """Replace the stored state with `state` in one transaction (all of it or none of it)."""
        rows = [(uid, m.hotkey, float(m.score), json.dumps(m.history.to_list(), separators=(",", ":")))
                for uid, m in state.miners.items()]
        with self._transaction():
            self._conn.execute("DELETE FROM miners")
            self._conn.executemany("INSERT INTO miners (uid, hotkey, score, history) VALUES (?, ?, ?, ?)", rows)
            self._conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [
                ("step", str(state.step)),
                ("last_weights_block", "" if state.last_weights_block is None else str(state.last_weights_block)),
            ])

    def close(self) -> None:
        self._conn.close()


def state_from_db(conn: sqlite3.Connection) -> ValidatorState:
    """Every row of a state database as a ValidatorState, checked (raises DatabaseError/ValueError/TypeError/KeyError
    on anything malformed). Copies nothing: StateStore.load adds the backup, a read-only viewer does without."""
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    state = ValidatorState(step=int(meta.get("step", "0")),
                           last_weights_block=int(meta["last_weights_block"]) if meta.get("last_weights_block") else None)
    for uid, hotkey, score, history in conn.execute("SELECT uid, hotkey, score, history FROM miners"):
        if not isinstance(score, float) or not math.isfinite(score):
            raise ValueError(f"uid {uid} has score {score!r}")
        items = json.loads(history)
        if not isinstance(items, list) or len(items) > WINDOW:
            raise ValueError(f"uid {uid} has a malformed history")
        state.miners[int(uid)] = MinerRecord(str(hotkey), float(score), History.from_list(items))
    if state.step < 0:
        raise ValueError(f"step {state.step} is negative")
    return state


def _create(path: Path, owner: str) -> None:
    """Build a new state file next to `path` and rename it into place: a crash never leaves half of one behind."""
    tmp = path.with_name(path.name + ".new")
    for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
        leftover.unlink(missing_ok=True)  # from a creation that crashed; a stale WAL would be replayed
    conn = sqlite3.connect(tmp, isolation_level=None)  # rollback journal: once committed, it is all in `tmp`
    try:
        conn.executescript(_SCHEMA)
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
            ("schema", str(SCHEMA_VERSION)), ("owner", owner), ("step", "0"), ("last_weights_block", "")])
    finally:
        conn.close()
    tmp.replace(path)


def check_state_file(conn: sqlite3.Connection) -> None:
    """Raise (DatabaseError or ValueError) unless `conn` is an intact SQLite file with a non-empty meta table."""
    check = conn.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise sqlite3.DatabaseError(f"quick_check: {check}")
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "meta" not in tables:
        raise ValueError("it has no meta table, so it is not a validator state file")
    if conn.execute("SELECT COUNT(*) FROM meta").fetchone()[0] == 0:
        raise ValueError("its meta table is empty")


class _Transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        return False


def _backup(path: Path) -> Optional[Path]:
    """Copy a bad state file (and its WAL) next to it, so nothing a human might want back is lost."""
    if not path.exists():
        return None
    stamp = time.strftime('%Y%m%d-%H%M%S')
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while dest.exists():  # a second failure in the same second keeps the first copy too
        dest, n = path.with_name(f"{path.name}.corrupt-{stamp}-{n}"), n + 1
    try:
        shutil.copy2(path, dest)
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                shutil.copy2(side, dest.with_name(dest.name + suffix))
    except OSError:
        return None
    return dest
