"""The devnet's SQLite file: schema, parameters, the wall-clock block counter, short transactions.

One file holds one subnet. Several processes (miners, a validator, the admin CLI) open it at once, so the file is in
WAL mode, every connection waits on a busy writer (`busy_timeout`), and every write is one short `BEGIN IMMEDIATE`
transaction. Connections are opened per operation (`mode=rw`, so a missing file is never silently recreated).
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 5.0
U16_MAX = 65535

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE neurons (
    uid INTEGER PRIMARY KEY,
    hotkey TEXT NOT NULL UNIQUE,
    coldkey TEXT NOT NULL,
    stake_rao INTEGER NOT NULL DEFAULT 0,
    validator_permit INTEGER NOT NULL DEFAULT 0,
    registered_at INTEGER NOT NULL,
    last_update INTEGER NOT NULL DEFAULT 0,
    axon_ip TEXT NOT NULL DEFAULT '0',           -- TEXT: an IPv6 address does not fit SQLite's 64-bit INTEGER
    axon_port INTEGER NOT NULL DEFAULT 0,
    axon_ip_type INTEGER NOT NULL DEFAULT 4,
    axon_protocol INTEGER NOT NULL DEFAULT 0,
    axon_version INTEGER NOT NULL DEFAULT 0,
    axon_block INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE weights (                          -- the latest row each validator set: JSON [[dest_uid, u16], ...]
    uid INTEGER PRIMARY KEY, block INTEGER NOT NULL, version_key INTEGER NOT NULL, row TEXT NOT NULL
);
CREATE TABLE commits (                          -- timelocked weight commits (never revealed: no drand offline)
    id INTEGER PRIMARY KEY AUTOINCREMENT, uid INTEGER NOT NULL, hotkey TEXT NOT NULL, block INTEGER NOT NULL,
    epoch INTEGER NOT NULL, reveal_round INTEGER NOT NULL, commit_hex TEXT NOT NULL
);
CREATE TABLE extrinsics (                       -- what was submitted, for `devnet show` and debugging
    id INTEGER PRIMARY KEY AUTOINCREMENT, block INTEGER NOT NULL, signer TEXT NOT NULL, call TEXT NOT NULL,
    ok INTEGER NOT NULL, error TEXT
);
"""
NEURON_COLUMNS = ("uid", "hotkey", "coldkey", "stake_rao", "validator_permit", "registered_at", "last_update",
                  "axon_ip", "axon_port", "axon_ip_type", "axon_protocol", "axon_version", "axon_block")


class DevnetError(Exception):
    """The devnet file is missing, corrupt, of another schema version, or an admin request is invalid."""


class DevnetOffline(Exception):
    """The devnet cannot be reached right now (taken offline, file gone, database busy); the seam maps it to
    `bittensor.RpcConnectionError`, which `Chain` turns into `ChainUnavailable`."""


@dataclass
class Params:
    """Subnet hyperparameters and clock settings, stored in the `meta` table."""

    netuid: int
    tempo: int = 100
    block_time: float = 1.0
    weights_rate_limit: int = 100
    min_allowed_weights: int = 1
    max_weight_limit: int = U16_MAX          # u16 fraction: no weight may exceed max_weight_limit/65535 of a row
    commit_reveal: bool = False
    reveal_period: int = 1                   # epochs until a timelocked commit would reveal
    serving_rate_limit: int = 0              # blocks between ServeAxon calls of one hotkey (0 = unlimited)
    version_key: int = 0                     # weights below this version key are rejected
    max_uids: int = 256
    name: str = "bitmind-lite devnet"
    symbol: str = "α"
    genesis_block: int = 1
    genesis_time: float = 0.0
    offline_until: float = 0.0               # 0 online; > now offline until then; math.inf offline until told

    def validate(self) -> None:
        checks = [(0 <= self.netuid <= U16_MAX, "netuid must be in 0..65535"),
                  (1 <= self.tempo <= U16_MAX, "tempo must be in 1..65535"),
                  (self.block_time > 0, "block_time must be > 0"),
                  (self.weights_rate_limit >= 0, "weights_rate_limit must be >= 0"),
                  (0 <= self.min_allowed_weights <= U16_MAX, "min_allowed_weights must be in 0..65535"),
                  (0 < self.max_weight_limit <= U16_MAX, "max_weight_limit must be in 1..65535"),
                  (self.reveal_period >= 1, "reveal_period must be >= 1"),
                  (self.serving_rate_limit >= 0, "serving_rate_limit must be >= 0"),
                  (self.version_key >= 0, "version_key must be >= 0"),
                  (1 <= self.max_uids <= 4096, "max_uids must be in 1..4096"),
                  (self.genesis_block >= 1, "genesis_block must be >= 1")]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise DevnetError("invalid devnet parameters: " + "; ".join(bad))

    def block_at(self, now: float) -> int:
        """Blocks advance with wall time: genesis + floor((now - genesis_time) / block_time)."""
        return self.genesis_block + max(0, math.floor((now - self.genesis_time) / self.block_time))

    def time_of(self, block: int) -> float:
        return self.genesis_time + (block - self.genesis_block) * self.block_time

    def last_epoch_block(self, block: int) -> int:
        """The chain runs a subnet's epoch when (block + netuid + 1) % (tempo + 1) == 0."""
        period = self.tempo + 1
        return max(0, block - (block + self.netuid + 1) % period)

    def epoch_index(self, block: int) -> int:
        return (block + self.netuid + 1) // (self.tempo + 1)

    def offline(self, now: float) -> bool:
        return self.offline_until > now


def _encode(value) -> str:
    return json.dumps(value if value != math.inf else "inf")


def _decode(text: str):
    value = json.loads(text)
    return math.inf if value == "inf" else value


class DevnetDB:
    """The file: create it, check it, and run short transactions on it."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().resolve()

    # ---- lifecycle ----
    @classmethod
    def create(cls, path: str | Path, params: Params) -> "DevnetDB":
        params.validate()
        db = cls(path)
        if db.path.exists():
            raise DevnetError(f"{db.path} already exists; a devnet is never recreated over data "
                              "(delete the file first to start over)")
        if not db.path.parent.is_dir():
            raise DevnetError(f"{db.path.parent} is not a directory")
        tmp = db.path.with_name(f"{db.path.name}.creating-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        con = sqlite3.connect(tmp, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")  # persistent: every later connection uses WAL
            con.executescript("BEGIN;" + SCHEMA + "COMMIT;")
            rows = {"schema_version": SCHEMA_VERSION, **asdict(params), "genesis_time": params.genesis_time or time.time()}
            con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, _encode(v)) for k, v in rows.items()])
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            con.close()
        for suffix in ("-wal", "-shm"):  # the -wal/-shm of the temp name would not follow the rename
            Path(str(tmp) + suffix).unlink(missing_ok=True)
        try:  # link, not rename: atomic, and fails instead of replacing a devnet another process just created
            os.link(tmp, db.path)
        except FileExistsError:
            raise DevnetError(f"{db.path} already exists; a devnet is never recreated over data") from None
        finally:
            tmp.unlink()
        return db

    def check(self) -> Params:
        """Open the file once and verify it: missing/corrupt/other-schema files raise DevnetError."""
        if not self.path.is_file():
            raise DevnetError(f"devnet file {self.path} does not exist; create it with "
                              f"`bitmind-lite devnet init {self.path} --netuid N`")
        try:
            with self.transaction() as con:
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if "meta" not in tables:
                    raise DevnetError(f"{self.path} is a SQLite file but not a bitmind-lite devnet (no meta table)")
                row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                version = _decode(row[0]) if row else None
                if version != SCHEMA_VERSION:
                    raise DevnetError(f"{self.path} has devnet schema version {version}; this bitmind-lite reads "
                                      f"version {SCHEMA_VERSION} (create a new devnet with `bitmind-lite devnet init`)")
                missing = {"neurons", "weights", "commits", "extrinsics"} - tables
                if missing:
                    raise DevnetError(f"{self.path} is missing tables {sorted(missing)} (corrupt devnet file)")
                return self.params(con)
        except DevnetOffline as e:
            raise DevnetError(f"cannot open devnet {self.path}: {e}") from None

    # ---- transactions ----
    def _open(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise DevnetOffline(f"devnet file {self.path} is gone")
        try:
            con = sqlite3.connect(f"file:{quote(str(self.path))}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S,
                                  isolation_level=None, check_same_thread=False)
            con.row_factory = sqlite3.Row
            con.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            con.execute("PRAGMA synchronous=NORMAL")  # safe in WAL mode; a crash loses at most the last commit
        except sqlite3.DatabaseError as e:
            raise _classify(self.path, e) from None
        return con

    @contextmanager
    def transaction(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """One short transaction. Writers take the write lock up front (BEGIN IMMEDIATE) so two processes never
        both read-then-write the same state; readers get a consistent snapshot."""
        con = self._open()
        try:
            con.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            yield con
            con.execute("COMMIT")
        except sqlite3.DatabaseError as e:
            raise _classify(self.path, e) from None
        finally:
            if con.in_transaction:
                con.execute("ROLLBACK")
            con.close()

    # ---- meta ----
    @staticmethod
    def params(con: sqlite3.Connection) -> Params:
        meta = {k: _decode(v) for k, v in con.execute("SELECT key, value FROM meta")}
        names = {f.name for f in fields(Params)}
        return Params(**{k: v for k, v in meta.items() if k in names})

    @staticmethod
    def set_params(con: sqlite3.Connection, **values) -> None:
        con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, _encode(v)) for k, v in values.items()])


def _classify(path: Path, e: sqlite3.DatabaseError) -> Exception:
    """Busy/locked/IO problems are transient (offline); anything else means the file itself is broken."""
    text = str(e).lower()
    if isinstance(e, sqlite3.OperationalError) and any(w in text for w in ("locked", "busy", "unable to open", "disk i/o")):
        return DevnetOffline(f"devnet {path}: {e}")
    return DevnetError(f"devnet {path} is corrupt or not a devnet file: {e}")
