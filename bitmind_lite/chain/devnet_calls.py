"""What the devnet does with a signed extrinsic: the chain's own checks, in the chain's order, then the state change.

Each handler validates first and writes last, inside the caller's write transaction, and rejects with the chain's
error name (`Reject("SettingWeightsTooFast", ...)`), which the SDK classifies into its `ErrorCode` just as it would
for a real node's receipt. Deliberate difference from finney: loopback addresses (127.0.0.1, ::1) may be served.
"""
from __future__ import annotations

import ipaddress
import json
import sqlite3
from typing import Any, Callable

from bitmind_lite.chain.devnet_db import U16_MAX, Params

COMMIT_REVEAL_VERSION = 4
MAX_UNREVEALED_COMMITS = 10


class Reject(Exception):
    """The chain refused the extrinsic: `name` is the chain's error name, e.g. "SettingWeightsTooFast"."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name
        self.message = message


def event(event_id: str, **attributes) -> dict:
    return {"event": {"module_id": "SubtensorModule", "event_id": event_id, "attributes": attributes}}


def _neuron(con: sqlite3.Connection, p: Params, netuid: int, hotkey: str, error: str) -> sqlite3.Row:
    if int(netuid) != p.netuid:
        raise Reject("SubnetNotExists", f"subnet {netuid} does not exist on this devnet (it has netuid {p.netuid})")
    row = con.execute("SELECT * FROM neurons WHERE hotkey=?", (hotkey,)).fetchone()
    if row is None:
        raise Reject(error, f"hotkey {hotkey} is not registered on netuid {netuid}")
    return row


def _check_weights_rate(p: Params, row: sqlite3.Row, block: int, error: str) -> None:
    """Chain rule: allowed when LastUpdate is 0 (never set) or block - LastUpdate >= WeightsSetRateLimit."""
    since = block - row["last_update"]
    if p.weights_rate_limit and row["last_update"] > 0 and since < p.weights_rate_limit:
        raise Reject(error, f"uid {row['uid']} set weights {since} blocks ago; the rate limit is "
                            f"{p.weights_rate_limit} blocks (retry in {p.weights_rate_limit - since} blocks)")


def serve_axon(con: sqlite3.Connection, p: Params, block: int, signer: str, args: dict) -> list[dict]:
    row = _neuron(con, p, args["netuid"], signer, "HotKeyNotRegisteredInNetwork")
    ip, port, ip_type = int(args["ip"]), int(args["port"]), int(args["ip_type"])
    if ip_type not in (4, 6):
        raise Reject("InvalidIpType", f"ip_type must be 4 or 6, got {ip_type}")
    if ip_type == 4 and ip >= 2**32 or ip_type == 6 and ip >= 2**128 - 1:
        raise Reject("InvalidIpAddress", f"{ip} is not a valid IPv{ip_type} address")
    if not 0 < port <= U16_MAX:
        raise Reject("InvalidPort", f"port must be in 1..65535, got {port}")
    limit, last = p.serving_rate_limit, row["axon_block"]
    if limit and last and block - last < limit:
        raise Reject("ServingRateLimitExceeded", f"endpoint served {block - last} blocks ago; the serving rate limit "
                                                 f"is {limit} blocks")
    con.execute("UPDATE neurons SET axon_ip=?, axon_port=?, axon_ip_type=?, axon_protocol=?, axon_version=?, "
                "axon_block=? WHERE uid=?", (str(ip), port, ip_type, int(args.get("protocol", 0)),
                                             int(args.get("version", 0)), block, row["uid"]))
    shown = ipaddress.ip_address(ip) if ip else "0"
    return [event("AxonServed", netuid=p.netuid, hotkey=signer, endpoint=f"{shown}:{port}")]


def set_mechanism_weights(con: sqlite3.Connection, p: Params, block: int, signer: str, args: dict) -> list[dict]:
    dests, values = [int(u) for u in args["dests"]], [int(w) for w in args["weights"]]
    if len(dests) != len(values):
        raise Reject("WeightVecNotEqualSize", f"{len(dests)} uids but {len(values)} weights")
    if int(args.get("mecid", 0)) != 0:
        raise Reject("MechanismDoesNotExist", f"mechanism {args['mecid']} does not exist (the devnet has only 0)")
    row = _neuron(con, p, args["netuid"], signer, "HotKeyNotRegisteredInSubNet")
    if int(args.get("version_key", 0)) < p.version_key:
        raise Reject("IncorrectWeightVersionKey", f"version_key {args.get('version_key', 0)} is older than the "
                                                  f"subnet's weights version key {p.version_key}")
    self_weight = dests == [row["uid"]]
    if not self_weight and not row["validator_permit"]:
        raise Reject("NeuronNoValidatorPermit", f"uid {row['uid']} has no validator permit")
    n = con.execute("SELECT COUNT(*) FROM neurons").fetchone()[0]
    if len(dests) > n:
        raise Reject("UidsLengthExceedUidsInSubNet", f"{len(dests)} weights for a subnet of {n} uids")
    _check_weights_rate(p, row, block, "SettingWeightsTooFast")
    if len(set(dests)) != len(dests):
        raise Reject("DuplicateUids", "each uid may appear once")
    if any(not 0 <= d < n for d in dests) or any(not 0 <= v <= U16_MAX for v in values):
        raise Reject("UidVecContainInvalidOne", f"uids must be in 0..{n - 1} and weights in 0..65535")
    if not self_weight and len(dests) < min(p.min_allowed_weights, n):
        raise Reject("WeightVecLengthIsLow", f"{len(dests)} weights; the subnet requires at least "
                                             f"{min(p.min_allowed_weights, n)}")
    total = sum(values)
    if not self_weight and p.max_weight_limit < U16_MAX and total:
        largest = max(v * U16_MAX // total for v in values)  # the chain normalises to sum 65535, then compares
        if largest > p.max_weight_limit:
            raise Reject("MaxWeightExceeded", f"largest weight is {largest}/65535 of the row; the limit is "
                                              f"{p.max_weight_limit}/65535")
    top = max(values, default=0)
    row_u16 = [[d, round(v * U16_MAX / top)] for d, v in zip(dests, values) if v] if top else []
    con.execute("INSERT OR REPLACE INTO weights VALUES (?, ?, ?, ?)",
                (row["uid"], block, int(args.get("version_key", 0)), json.dumps(row_u16)))
    con.execute("UPDATE neurons SET last_update=? WHERE uid=?", (block, row["uid"]))
    return [event("WeightsSet", netuid=p.netuid, uid=row["uid"])]


def commit_timelocked_weights(con: sqlite3.Connection, p: Params, block: int, signer: str, args: dict) -> list[dict]:
    """Stored and counted for the rate limit like the chain does; never revealed, since revealing needs the drand
    beacon's signature for `reveal_round`, which an offline devnet cannot fetch."""
    if int(args.get("mecid", 0)) != 0:
        raise Reject("MechanismDoesNotExist", f"mechanism {args['mecid']} does not exist (the devnet has only 0)")
    row = _neuron(con, p, args["netuid"], signer, "HotKeyNotRegisteredInSubNet")
    if not p.commit_reveal:
        raise Reject("CommitRevealDisabled", f"commit-reveal is off on netuid {p.netuid}; set weights directly")
    if int(args.get("commit_reveal_version", 0)) != COMMIT_REVEAL_VERSION:
        raise Reject("IncorrectCommitRevealVersion", f"commit_reveal_version must be {COMMIT_REVEAL_VERSION}")
    _check_weights_rate(p, row, block, "CommittingWeightsTooFast")
    pending = con.execute("SELECT COUNT(*) FROM commits WHERE uid=?", (row["uid"],)).fetchone()[0]
    if pending >= MAX_UNREVEALED_COMMITS:
        raise Reject("TooManyUnrevealedCommits", f"uid {row['uid']} has {pending} unrevealed commits")
    commit = args["commit"]
    commit_hex = "0x" + (bytes(commit).hex() if not isinstance(commit, str) else commit.removeprefix("0x"))
    con.execute("INSERT INTO commits (uid, hotkey, block, epoch, reveal_round, commit_hex) VALUES (?, ?, ?, ?, ?, ?)",
                (row["uid"], signer, block, p.epoch_index(block), int(args["reveal_round"]), commit_hex))
    con.execute("UPDATE neurons SET last_update=? WHERE uid=?", (block, row["uid"]))
    return [event("TimelockedWeightsCommitted", netuid=p.netuid, hotkey=signer, reveal_round=int(args["reveal_round"]))]


CALLS: dict[tuple[str, str], Callable[[sqlite3.Connection, Params, int, str, dict], list[dict]]] = {
    ("SubtensorModule", "serve_axon"): serve_axon,
    ("SubtensorModule", "set_mechanism_weights"): set_mechanism_weights,
    ("SubtensorModule", "commit_timelocked_mechanism_weights"): commit_timelocked_weights,
}


def jsonable(value: Any) -> Any:
    """Call parameters as JSON (bytes as 0x-hex), for signing and for the extrinsic log."""
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
