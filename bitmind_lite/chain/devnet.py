"""The embedded devnet: bittensor's `Substrate` seam over a SQLite file, so the real SDK runs offline.

    devnet = Devnet.create("/tmp/dev.db", netuid=1, weights_rate_limit=10)
    uid = devnet.register(wallet.hotkey.ss58_address, stake=1000, validator_permit=True)
    sub = bittensor.Subtensor("local", substrate=Devnet("/tmp/dev.db"))    # what connect("devnet:/tmp/dev.db") does
    sub.subnets.metagraph(1); sub.execute(bittensor.SetWeights(netuid=1, weights={0: 1.0}), wallet.hotkey)

The SDK's reads, intents, preflights and error classification all run unchanged; only the transport is swapped.
Blocks advance with wall time. Reads are answered by `devnet_reads`, signed extrinsics by `devnet_calls`; anything
else raises `DevnetUnsupported` naming the call. To make the chain briefly unreachable in tests, use
`set_available(False[, for_seconds])` (or move the file away): every seam call then raises
`bittensor.RpcConnectionError`, which `Chain` reports as `ChainUnavailable`.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import math
import time
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Optional

import bittensor as bt
from bittensor.sp_core import Keypair, ss58_decode

from bitmind_lite.chain import devnet_reads
from bitmind_lite.chain.devnet_calls import CALLS, Reject, jsonable
from bitmind_lite.chain.devnet_db import U16_MAX, DevnetDB, DevnetError, DevnetOffline, Params

RAO_PER_UNIT = 10**9
TUNABLE = ("tempo", "block_time", "weights_rate_limit", "min_allowed_weights", "max_weight_limit", "commit_reveal",
           "reveal_period", "serving_rate_limit", "version_key", "max_uids")
EXTRINSIC_LOG_KEEP = 2000


class DevnetUnsupported(NotImplementedError):
    """The SDK asked the devnet for something it does not model; the message names the call."""


def _check_ss58(address: str, what: str) -> None:
    try:
        ss58_decode(address)
    except (ValueError, TypeError) as e:
        raise DevnetError(f"{what} {address!r} is not a valid ss58 address ({e})") from None


def _block_hash(block: int) -> str:
    return f"0x{block:064x}"


class Devnet:
    """One subnet in one SQLite file: an admin API plus the `bittensor.Substrate` seam (the async methods)."""

    def __init__(self, path: str | Path):
        self.db = DevnetDB(path)
        self.path = self.db.path
        self.netuid = self.db.check().netuid   # missing / corrupt / other schema version -> DevnetError
        self.token_symbols: dict[int, str] = {}  # installed by bittensor's Client.connect

    @classmethod
    def create(cls, path: str | Path, netuid: int, tempo: int = 100, block_time: float = 1.0,
               weights_rate_limit: int = 100, min_allowed_weights: int = 1, max_weight_limit: int = U16_MAX,
               commit_reveal: bool = False, **more: Any) -> "Devnet":
        """Create a new devnet file (refuses to overwrite one). `more`: any other `Params` field, e.g.
        serving_rate_limit, version_key, max_uids, reveal_period, name."""
        unknown = set(more) - {f.name for f in fields(Params)}
        if unknown:
            raise DevnetError(f"unknown devnet parameters {sorted(unknown)}")
        DevnetDB.create(path, Params(netuid=netuid, tempo=tempo, block_time=block_time,
                                     weights_rate_limit=weights_rate_limit, min_allowed_weights=min_allowed_weights,
                                     max_weight_limit=max_weight_limit, commit_reveal=commit_reveal, **more))
        return cls(path)

    def __repr__(self) -> str:
        return f"Devnet({str(self.path)!r}, netuid={self.netuid})"

    # ------------------------------------------------------------------ admin (works while offline)
    @property
    def params(self) -> Params:
        with self.db.transaction() as con:
            return DevnetDB.params(con)

    @property
    def block(self) -> int:
        return self.params.block_at(time.time())

    def register(self, hotkey_ss58: str, stake: float = 0.0, validator_permit: bool = False,
                 coldkey_ss58: Optional[str] = None, replace_uid: Optional[int] = None) -> int:
        """Register a hotkey (stake in subnet alpha) and return its uid. `replace_uid` deregisters that uid's hotkey
        and gives the uid to the new one, with fresh weights, endpoint and LastUpdate, as the chain does."""
        coldkey_ss58 = coldkey_ss58 or hotkey_ss58
        _check_ss58(hotkey_ss58, "hotkey")
        _check_ss58(coldkey_ss58, "coldkey")
        if not (math.isfinite(stake) and stake >= 0):
            raise DevnetError(f"stake must be a finite number >= 0, got {stake}")
        with self.db.transaction(write=True) as con:
            p = DevnetDB.params(con)
            block = p.block_at(time.time())
            taken = con.execute("SELECT uid FROM neurons WHERE hotkey=?", (hotkey_ss58,)).fetchone()
            if taken is not None:
                raise DevnetError(f"hotkey {hotkey_ss58} is already registered as uid {taken['uid']}")
            values = (hotkey_ss58, coldkey_ss58, round(stake * RAO_PER_UNIT), int(bool(validator_permit)), block)
            if replace_uid is None:
                uid = con.execute("SELECT COUNT(*) FROM neurons").fetchone()[0]
                if uid >= p.max_uids:
                    raise DevnetError(f"the subnet is full ({p.max_uids} uids); pass replace_uid to replace a neuron")
                con.execute("INSERT INTO neurons (hotkey, coldkey, stake_rao, validator_permit, registered_at, uid) "
                            "VALUES (?, ?, ?, ?, ?, ?)", (*values, uid))
                return uid
            if con.execute("SELECT 1 FROM neurons WHERE uid=?", (replace_uid,)).fetchone() is None:
                raise DevnetError(f"replace_uid {replace_uid} is not registered")
            con.execute("UPDATE neurons SET hotkey=?, coldkey=?, stake_rao=?, validator_permit=?, registered_at=?, "
                        "last_update=0, axon_ip='0', axon_port=0, axon_ip_type=4, axon_protocol=0, axon_version=0, "
                        "axon_block=0 WHERE uid=?", (*values, replace_uid))
            con.execute("DELETE FROM weights WHERE uid=?", (replace_uid,))
            con.execute("DELETE FROM commits WHERE uid=?", (replace_uid,))
            return replace_uid

    def set_neuron(self, uid: int, *, stake: Optional[float] = None, validator_permit: Optional[bool] = None) -> None:
        """Change a registered neuron's stake (alpha) or validator permit."""
        with self.db.transaction(write=True) as con:
            if con.execute("SELECT 1 FROM neurons WHERE uid=?", (uid,)).fetchone() is None:
                raise DevnetError(f"uid {uid} is not registered")
            if stake is not None:
                if not (math.isfinite(stake) and stake >= 0):
                    raise DevnetError(f"stake must be a finite number >= 0, got {stake}")
                con.execute("UPDATE neurons SET stake_rao=? WHERE uid=?", (round(stake * RAO_PER_UNIT), uid))
            if validator_permit is not None:
                con.execute("UPDATE neurons SET validator_permit=? WHERE uid=?", (int(validator_permit), uid))

    def set_available(self, available: bool, for_seconds: Optional[float] = None) -> None:
        """Take the devnet offline (every SDK call raises RpcConnectionError) or back online. With `for_seconds`
        it comes back by itself, which lets a test check that a node rides out an outage."""
        until = 0.0 if available else (time.time() + for_seconds if for_seconds else math.inf)
        with self.db.transaction(write=True) as con:
            DevnetDB.set_params(con, offline_until=until)

    def set_hyperparameters(self, **values: Any) -> Params:
        """Change subnet hyperparameters (any of TUNABLE). A new block_time keeps the current block number."""
        unknown = set(values) - set(TUNABLE)
        if unknown:
            raise DevnetError(f"cannot set {sorted(unknown)}; tunable: {', '.join(TUNABLE)}")
        with self.db.transaction(write=True) as con:
            p = DevnetDB.params(con)
            now = time.time()
            new = replace(p, **values)
            if new.block_time != p.block_time:
                new = replace(new, genesis_block=p.block_at(now), genesis_time=now)
            new.validate()
            DevnetDB.set_params(con, **{k: getattr(new, k) for k in (*TUNABLE, "genesis_block", "genesis_time")})
            return new

    def advance(self, blocks: int) -> int:
        """Jump the clock forward by `blocks` (e.g. past a rate limit in a test); returns the new block."""
        if blocks < 0:
            raise DevnetError("the devnet clock only moves forward")
        with self.db.transaction(write=True) as con:
            p = DevnetDB.params(con)
            DevnetDB.set_params(con, genesis_time=p.genesis_time - blocks * p.block_time)
            return p.block_at(time.time()) + blocks

    def neurons(self) -> list[dict]:
        """Registered neurons as plain dicts (stake in alpha, endpoint "ip:port" or None)."""
        with self.db.transaction() as con:
            rows = devnet_reads.neurons(con)
            incentive = devnet_reads.incentives(rows, devnet_reads.weight_rows(con))
        return [{"uid": r["uid"], "hotkey": r["hotkey"], "coldkey": r["coldkey"], "stake": r["stake_rao"] / RAO_PER_UNIT,
                 "validator_permit": bool(r["validator_permit"]), "registered_at": r["registered_at"],
                 "last_update": r["last_update"], "endpoint": devnet_reads.endpoint(r), "incentive": inc}
                for r, inc in zip(rows, incentive)]

    def weights(self) -> dict[int, dict[int, float]]:
        """The latest weights each validator set, as {validator_uid: {miner_uid: fraction of the row}}."""
        with self.db.transaction() as con:
            rows = devnet_reads.weight_rows(con)
        return {uid: {d: v / sum(x for _, x in row) for d, v in row} for uid, row in sorted(rows.items()) if row}

    def extrinsics(self, limit: int = 20) -> list[dict]:
        """The most recent submitted extrinsics, newest first."""
        with self.db.transaction() as con:
            rows = con.execute("SELECT * FROM extrinsics ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) for r in rows]

    # ------------------------------------------------------------------ the Substrate seam
    @contextmanager
    def _session(self, write: bool = False, block_hash: Optional[str] = None):
        """(connection, params, block) for one seam call; offline or unreadable -> RpcConnectionError."""
        try:
            with self.db.transaction(write) as con:
                p = DevnetDB.params(con)
                now = time.time()
                if p.offline(now):
                    back = "until told" if p.offline_until == math.inf else f"for {p.offline_until - now:.1f}s more"
                    raise DevnetOffline(f"devnet {self.path} is offline ({back}; Devnet.set_available)")
                head = p.block_at(now)
                yield con, p, head if block_hash is None else self._block_of(block_hash, head)
        except (DevnetOffline, DevnetError) as e:
            raise bt.RpcConnectionError(f"could not reach the devnet: {e}") from None

    @staticmethod
    def _block_of(block_hash: str, head: int) -> int:
        block = int(block_hash, 16)
        if block > head:
            raise bt.ChainError(f"block {block} is beyond the devnet head {head}")
        return block

    def balance(self, rao: int, netuid: int = 0) -> bt.Balance:
        return bt.Balance(int(rao), netuid, self.token_symbols.get(netuid) if netuid else None)

    async def connect(self) -> None:
        with self._session():
            pass

    async def close(self) -> None:
        pass  # nothing held open: every call opens its own short-lived connection

    async def block_number(self) -> int:
        with self._session() as (_con, _p, block):
            return block

    finalized_block_number = block_number  # the devnet finalizes instantly

    async def block_hash(self, block: Optional[int] = None) -> str:
        with self._session() as (_con, _p, head):
            return _block_hash(head if block is None else self._block_of(_block_hash(block), head))

    async def block_time(self) -> float:
        with self._session() as (_con, p, _block):
            return p.block_time

    async def spec_version(self) -> int:
        return 0

    async def get_block(self, block_number: Optional[int] = None, block_hash: Optional[str] = None) -> dict:
        with self._session(block_hash=block_hash) as (_con, _p, head):
            number = head if block_number is None else self._block_of(_block_hash(block_number), head)
        return {"header": {"number": number, "hash": _block_hash(number), "parentHash": _block_hash(number - 1)},
                "extrinsics": []}

    async def blocks(self, *, finalized: bool = False):
        """New block headers as the clock ticks (polled; there is no node to push them)."""
        last = None
        while True:
            with self._session() as (_con, p, head):
                poll = min(p.block_time / 4, 0.25)
            if head != last:
                last = head
                yield {"header": {"number": head, "hash": _block_hash(head), "parentHash": _block_hash(head - 1)}}
            await asyncio.sleep(poll)

    async def query(self, module: str, storage_function: str, params: Optional[list] = None,
                    block_hash: Optional[str] = None) -> Any:
        handler = self._handler(devnet_reads.STORAGE, module, storage_function, "storage item")
        with self._session(block_hash=block_hash) as (con, p, block):
            return handler(con, p, block, list(params or []))

    async def query_map(self, module: str, storage_function: str, params: Optional[list] = None,
                        block_hash: Optional[str] = None) -> list:
        handler = self._handler(devnet_reads.STORAGE_MAPS, module, storage_function, "storage map")
        with self._session(block_hash=block_hash) as (con, p, block):
            return handler(con, p, block, list(params or []))

    async def query_batch(self, module: str, storage_function: str, param_sets: list,
                          block_hash: Optional[str] = None) -> list:
        return [await self.query(module, storage_function, ps, block_hash) for ps in param_sets]

    async def map_has_entries(self, module: str, storage_function: str, params: list,
                              block_hash: Optional[str] = None) -> bool:
        return bool(await self.query_map(module, storage_function, params, block_hash))

    async def runtime_call(self, api: str, method: str, params: list, block_hash: Optional[str] = None) -> Any:
        handler = self._handler(devnet_reads.RUNTIME, api, method, "runtime API")
        with self._session(block_hash=block_hash) as (con, p, block):
            return handler(con, p, block, list(params or []))

    async def compose(self, call) -> Any:
        self._handler(CALLS, call.module, call.function, "extrinsic")  # fail at build time, before signing
        return call

    async def estimate_fee(self, call, keypair) -> bt.Balance:
        return bt.Balance.from_tao(0)  # the devnet charges no fees

    async def submit(self, call, keypair, *, nonce: Optional[int] = None, period: Optional[int] = None,
                     wait_for_inclusion: bool = True, wait_for_finalization: bool = True) -> bt.ExtrinsicResult:
        """Sign with the keypair, verify the signature against its public key, apply the call in one write
        transaction, and log it. A refused call is a failed result carrying the chain's error name."""
        handler = self._handler(CALLS, call.module, call.function, "extrinsic")
        signer = keypair.ss58_address
        args = jsonable(dict(call.params))
        payload = json.dumps({"call": [call.module, call.function, args], "signer": signer,
                              "nonce": nonce if nonce is not None else time.time_ns()}, sort_keys=True).encode()
        try:
            signature = keypair.sign(payload)
            if inspect.isawaitable(signature):
                signature = await signature
            verified = Keypair(public_key=bytes(keypair.public_key),
                               crypto_type=getattr(keypair, "crypto_type", 1)).verify(payload, bytes(signature))
        except Exception as e:  # e.g. a public-only keypair: "no private key set to create signatures"
            return self._failed("InvalidSignature", f"could not sign the extrinsic as {signer}: {e}")
        if not verified:
            return self._failed("InvalidSignature", f"the signature does not match {signer}")
        with self._session(write=True) as (con, p, block):
            try:
                events, error = handler(con, p, block, signer, call.params), None
            except Reject as reject:
                events, error = [], reject
            index = con.execute("SELECT COUNT(*) FROM extrinsics WHERE block=?", (block,)).fetchone()[0]
            con.execute("INSERT INTO extrinsics (block, signer, call, ok, error) VALUES (?, ?, ?, ?, ?)",
                        (block, signer, json.dumps([call.module, call.function, args]), int(error is None),
                         None if error is None else f"{error.name}: {error.message}"))
            con.execute("DELETE FROM extrinsics WHERE id <= (SELECT MAX(id) FROM extrinsics) - ?", (EXTRINSIC_LOG_KEEP,))
        where = {"block_hash": _block_hash(block), "extrinsic_id": f"{block}-{index}"}
        if error is not None:
            return bt.ExtrinsicResult(success=False, message=f"{error.name}: {error.message}",
                                      error=bt.ChainError(error.message, name=error.name), **where)
        events = [{**e, "extrinsic_idx": index} for e in events]
        return bt.ExtrinsicResult(success=True, message=f"{call.function} included in block {block}",
                                  fee=bt.Balance.from_tao(0), events=events, **where)

    @staticmethod
    def _failed(name: str, message: str) -> bt.ExtrinsicResult:
        return bt.ExtrinsicResult(success=False, message=message, error=bt.ChainError(message, name=name))

    @staticmethod
    def _handler(table: dict, module: str, name: str, kind: str):
        handler = table.get((module, name))
        if handler is None:
            raise DevnetUnsupported(f"the bitmind-lite devnet does not implement the {kind} {module}.{name}; "
                                    f"supported: {', '.join(f'{m}.{n}' for m, n in table)}")
        return handler

    def __getattr__(self, name: str):
        """Substrate methods the devnet does not model fail loudly, naming the method."""
        if not name.startswith("_") and name in _SUBSTRATE_METHODS:
            def unsupported(*_args, **_kwargs):
                raise DevnetUnsupported(f"the bitmind-lite devnet does not implement Substrate.{name}()")
            return unsupported
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


_SUBSTRATE_METHODS = frozenset(n for n in dir(bt.Substrate) if not n.startswith("_"))
