"""What the devnet answers when the SDK reads: storage items, storage maps and the metagraph runtime API.

Each answer has the shape the real chain's decoder would hand the SDK (plain ints, lists, dicts), so the SDK's own
read code (`bittensor.reads`, `bittensor.metagraph`) runs unchanged. The devnet keeps only the latest state: a read
pinned to an older block sees today's values with that block's number.
"""
from __future__ import annotations

import ipaddress
import json
import sqlite3
from typing import Any, Callable

from bitmind_lite.chain.devnet_db import U16_MAX, Params

MECHANISM_STRIDE = 4096  # storage index of (netuid, mechid) = mechid * 4096 + netuid; the devnet has mechanism 0 only
Handler = Callable[[sqlite3.Connection, Params, int, list], Any]


def neurons(con: sqlite3.Connection) -> list[sqlite3.Row]:
    return con.execute("SELECT * FROM neurons ORDER BY uid").fetchall()


def axon_info(row: sqlite3.Row) -> dict:
    return {"block": row["axon_block"], "version": row["axon_version"], "ip": int(row["axon_ip"]),
            "port": row["axon_port"], "ip_type": row["axon_ip_type"], "protocol": row["axon_protocol"],
            "placeholder1": 0, "placeholder2": 0}


def endpoint(row: sqlite3.Row) -> str | None:
    """"ip:port" ("[v6]:port") as the SDK's metagraph shows it, or None when nothing (or ip 0) is served."""
    ip = int(row["axon_ip"])
    if not row["axon_block"] or not ip:
        return None
    shown = ipaddress.IPv4Address(ip) if row["axon_ip_type"] == 4 else f"[{ipaddress.IPv6Address(ip)}]"
    return f"{shown}:{row['axon_port']}"


def weight_rows(con: sqlite3.Connection) -> dict[int, list[tuple[int, int]]]:
    return {r["uid"]: [tuple(x) for x in json.loads(r["row"])] for r in con.execute("SELECT uid, row FROM weights")}


def _ours(p: Params, netuid: Any) -> bool:
    return netuid is not None and int(netuid) == p.netuid


def _ours_mech(p: Params, index: Any) -> bool:
    return index is not None and int(index) == p.netuid  # mechanism 0 only


def _param(value: Callable[[Params], Any], default: Any = None) -> Handler:
    """A per-subnet hyperparameter: [netuid] -> value, or `default` for a subnet this devnet does not have."""
    return lambda con, p, block, args: value(p) if _ours(p, args[0]) else default


def _uid(con, p, block, args):
    if not _ours(p, args[0]):
        return None
    row = con.execute("SELECT uid FROM neurons WHERE hotkey=?", (args[1],)).fetchone()
    return None if row is None else row["uid"]


def _key(con, p, block, args):
    if not _ours(p, args[0]):
        return None
    row = con.execute("SELECT hotkey FROM neurons WHERE uid=?", (int(args[1]),)).fetchone()
    return None if row is None else row["hotkey"]


def _axon(con, p, block, args):
    if not _ours(p, args[0]):
        return None
    row = con.execute("SELECT * FROM neurons WHERE hotkey=?", (args[1],)).fetchone()
    return None if row is None or row["axon_block"] == 0 else axon_info(row)


def _is_member(con, p, block, args):
    return _ours(p, args[1]) and con.execute("SELECT 1 FROM neurons WHERE hotkey=?", (args[0],)).fetchone() is not None


def _column(name: str, cast=int) -> Handler:
    def read(con, p, block, args):
        if not _ours_mech(p, args[0]):
            return []
        return [cast(r[name]) for r in neurons(con)]
    return read


def _weights_of(con, p, block, args):
    if not _ours_mech(p, args[0]):
        return []
    return weight_rows(con).get(int(args[1]), [])


STORAGE: dict[tuple[str, str], Handler] = {
    ("SubtensorModule", "NetworksAdded"): _param(lambda p: True, False),
    ("SubtensorModule", "SubnetworkN"): lambda con, p, b, a: (
        con.execute("SELECT COUNT(*) FROM neurons").fetchone()[0] if _ours(p, a[0]) else 0),
    ("SubtensorModule", "MaxAllowedUids"): _param(lambda p: p.max_uids),
    ("SubtensorModule", "Tempo"): _param(lambda p: p.tempo),
    ("SubtensorModule", "Uids"): _uid,
    ("SubtensorModule", "Keys"): _key,
    ("SubtensorModule", "Axons"): _axon,
    ("SubtensorModule", "IsNetworkMember"): _is_member,
    ("SubtensorModule", "LastUpdate"): _column("last_update"),
    ("SubtensorModule", "ValidatorPermit"): lambda con, p, b, a: (
        [bool(r["validator_permit"]) for r in neurons(con)] if _ours(p, a[0]) else []),
    ("SubtensorModule", "Weights"): _weights_of,
    ("SubtensorModule", "CommitRevealWeightsEnabled"): _param(lambda p: p.commit_reveal, False),
    ("SubtensorModule", "WeightsSetRateLimit"): _param(lambda p: p.weights_rate_limit),
    ("SubtensorModule", "MinAllowedWeights"): _param(lambda p: p.min_allowed_weights),
    ("SubtensorModule", "MaxWeightsLimit"): _param(lambda p: p.max_weight_limit),
    ("SubtensorModule", "WeightsVersionKey"): _param(lambda p: p.version_key),
    ("SubtensorModule", "ServingRateLimit"): _param(lambda p: p.serving_rate_limit),
    ("SubtensorModule", "RevealPeriodEpochs"): _param(lambda p: p.reveal_period),
    ("SubtensorModule", "SubnetEpochConsensus"): _param(lambda p: "Yuma"),
    ("SubtensorModule", "LastEpochBlock"): lambda con, p, b, a: p.last_epoch_block(b) if _ours(p, a[0]) else None,
    ("SubtensorModule", "PendingEpochAt"): _param(lambda p: 0),
    ("SubtensorModule", "SubnetEpochIndex"): lambda con, p, b, a: p.epoch_index(b) if _ours(p, a[0]) else None,
    ("SubtensorModule", "BlocksSinceLastStep"): lambda con, p, b, a: (
        b - p.last_epoch_block(b) if _ours(p, a[0]) else None),
    ("SubtensorModule", "StakeThreshold"): lambda con, p, b, a: 0,
    ("Timestamp", "Now"): lambda con, p, b, a: int(p.time_of(b) * 1000),
}


def _map_uids(con, p, block, args):
    return [(r["hotkey"], r["uid"]) for r in neurons(con)] if _ours(p, args[0]) else []


def _map_keys(con, p, block, args):
    return [(r["uid"], r["hotkey"]) for r in neurons(con)] if _ours(p, args[0]) else []


def _map_axons(con, p, block, args):
    return [(r["hotkey"], axon_info(r)) for r in neurons(con) if r["axon_block"]] if _ours(p, args[0]) else []


def _map_membership(con, p, block, args):
    found = con.execute("SELECT 1 FROM neurons WHERE hotkey=?", (args[0],)).fetchone()
    return [(p.netuid, True)] if found else []


def _map_weights(con, p, block, args):
    return sorted(weight_rows(con).items()) if _ours_mech(p, args[0]) else []


def _map_commits(con, p, block, args):
    if not _ours_mech(p, args[0]):
        return []
    by_epoch: dict[int, list] = {}
    for r in con.execute("SELECT * FROM commits ORDER BY id"):
        by_epoch.setdefault(r["epoch"], []).append((r["hotkey"], r["block"], r["commit_hex"], r["reveal_round"]))
    return sorted(by_epoch.items())


STORAGE_MAPS: dict[tuple[str, str], Handler] = {
    ("SubtensorModule", "TokenSymbol"): lambda con, p, b, a: [(p.netuid, list(p.symbol.encode()))],
    ("SubtensorModule", "Uids"): _map_uids,
    ("SubtensorModule", "Keys"): _map_keys,
    ("SubtensorModule", "Axons"): _map_axons,
    ("SubtensorModule", "IsNetworkMember"): _map_membership,
    ("SubtensorModule", "Weights"): _map_weights,
    ("SubtensorModule", "TimelockedWeightCommits"): _map_commits,
    # The devnet has no Commitments pallet calls, so there are never any commitments to list.
    ("Commitments", "CommitmentOf"): lambda con, p, b, a: [],
    ("Commitments", "RevealedCommitments"): lambda con, p, b, a: [],
}


def incentives(rows: list[sqlite3.Row], weights: dict[int, list[tuple[int, int]]]) -> list[float]:
    """A simplified Yuma: the stake-weighted mean of the permitted validators' latest (row-normalised) weights,
    normalised to sum 1. No clipping, bonds or consensus; enough for a localnet to show who is winning."""
    totals = [0.0] * len(rows)
    stake_sum = 0.0
    for r in rows:
        row = weights.get(r["uid"])
        if not row or not r["validator_permit"]:
            continue
        stake = max(float(r["stake_rao"]), 1.0)  # a zero-stake validator still counts (devnets often have no stake)
        row_sum = sum(v for _, v in row)
        for dest, value in row:
            if dest < len(totals):
                totals[dest] += stake * value / row_sum
        stake_sum += stake
    total = sum(totals)
    return [t / total for t in totals] if total else totals


def trusts(rows: list[sqlite3.Row], weights: dict[int, list[tuple[int, int]]]) -> list[float]:
    """Per uid, the stake share of the permitted validators whose latest weights include it (Yuma's trust without
    its consensus clipping): how much of the subnet's validation stands behind a miner."""
    support, total = [0.0] * len(rows), 0.0
    for r in rows:
        row = weights.get(r["uid"])
        if row and r["validator_permit"]:
            stake = max(float(r["stake_rao"]), 1.0)  # as in incentives(): a zero-stake validator still counts
            total += stake
            for dest, value in row:
                if value and dest < len(support):
                    support[dest] += stake
    return [x / total for x in support] if total else support


def _metagraph(con, p, block, args):
    if not _ours(p, args[0]):
        return None
    rows = neurons(con)
    n = len(rows)
    weights = weight_rows(con)
    incentive = [round(x * U16_MAX) for x in incentives(rows, weights)]
    owner = rows[0] if rows else None
    zeros = [0] * n
    return {
        "netuid": p.netuid, "name": list(p.name.encode()), "symbol": list(p.symbol.encode()), "identity": None,
        "network_registered_at": p.genesis_block,
        "owner_hotkey": owner["hotkey"] if owner else "", "owner_coldkey": owner["coldkey"] if owner else "",
        "block": block, "tempo": p.tempo, "last_step": p.last_epoch_block(block),
        "blocks_since_last_step": block - p.last_epoch_block(block),
        "subnet_emission": 0, "alpha_in": 0, "alpha_out": 0, "tao_in": 0, "moving_price": {"bits": 0},
        "num_uids": n, "max_uids": p.max_uids,
        "hotkeys": [r["hotkey"] for r in rows], "coldkeys": [r["coldkey"] for r in rows],
        "identities": [None] * n, "axons": [axon_info(r) for r in rows], "active": [True] * n,
        "validator_permit": [bool(r["validator_permit"]) for r in rows], "pruning_score": zeros,
        "last_update": [r["last_update"] for r in rows], "emission": zeros, "dividends": zeros,
        "incentives": incentive, "consensus": zeros,
        "trust": [round(x * U16_MAX) for x in trusts(rows, weights)], "rank": incentive,
        "block_at_registration": [r["registered_at"] for r in rows],
        "alpha_stake": [r["stake_rao"] for r in rows], "tao_stake": zeros,
        "total_stake": [r["stake_rao"] for r in rows],
    }


RUNTIME: dict[tuple[str, str], Handler] = {
    ("SubnetInfoRuntimeApi", "get_metagraph"): _metagraph,
}
