"""Slurm's own partition and node limits, from `scontrol show partition|node --oneliner`.

Pure functions: build the argv, parse what scontrol prints (captured from the lab in
tests/fixtures/slurm/). The gateway compares these live limits with what its site policy promises.
`scontrol` prints one `Key=Value ...` record per line; values may hold spaces (`OS=Linux 6.1 #1 SMP`)
and `=` (`TRES=cpu=32,mem=32000M`), so records are split at ` Key=` boundaries only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType

from schedulers.durations import parse_slurm_time

UNLIMITED_WORDS = frozenset({"UNLIMITED", "INFINITE", "NONE", "N/A", "(null)", ""})


def build_partitions_argv() -> list[str]:
    return ["scontrol", "show", "partition", "--oneliner"]


def build_nodes_argv() -> list[str]:
    return ["scontrol", "show", "node", "--oneliner"]


@dataclass(frozen=True)
class PartitionLimits:
    """One partition's limits as slurmctld enforces them. None means unlimited (or not set)."""

    name: str
    max_time: timedelta | None
    default_time: timedelta | None
    max_nodes: int | None
    max_cpus_per_node: int | None
    max_mem_per_node_mb: int | None
    max_mem_per_cpu_mb: int | None
    def_mem_per_cpu_mb: int | None
    nodes: tuple[str, ...]
    """Node names, expanded from Slurm's hostlist (`c[1-2]` -> c1, c2)."""
    state: str
    default: bool
    allow_groups: tuple[str, ...] | None
    """Unix groups allowed to use the partition; None means ALL."""
    allow_accounts: tuple[str, ...] | None
    raw: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class NodeInfo:
    name: str
    address: str
    """NodeAddr: what the hub uses to reach the node (the name itself may not resolve)."""
    hostname: str
    cpus: int | None
    real_memory_mb: int | None
    gpus: int
    state: str
    partitions: tuple[str, ...]
    raw: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)


_KEY = re.compile(r"(?:^|(?<=\s))([A-Za-z][A-Za-z0-9_:/.]*)=")


def parse_record(line: str) -> dict[str, str]:
    """One `--oneliner` record into its fields. Values keep inner spaces and `=` signs."""
    keys = list(_KEY.finditer(line))
    record = {}
    for i, match in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(line)
        record[match.group(1)] = line[match.end():end].strip()
    return record


def _number(value: str | None) -> int | None:
    if value is None or value.strip().upper() in UNLIMITED_WORDS:
        return None
    text = value.strip().rstrip("M")  # memory may carry a unit letter in some versions
    return int(text) if text.isascii() and text.isdigit() else None


def _names(value: str | None) -> tuple[str, ...] | None:
    if value is None or value.strip().upper() in ("ALL", ""):
        return None
    return tuple(v for v in value.split(",") if v)


def expand_hostlist(text: str) -> tuple[str, ...]:
    """Slurm hostlist -> names: `c[1-2]`, `n[01-03,7],gpu1`, `r[1-2]-n[1-2]`, `(null)` -> ()."""
    if text.strip() in UNLIMITED_WORDS:
        return ()
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    names: list[str] = []
    for item in filter(None, (i.strip() for i in items)):
        names.extend(_expand_one(item))
    return tuple(names)


def _expand_one(item: str) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", item)
    if not match:
        return [item]
    prefix, rest = item[:match.start()], item[match.end():]
    out = []
    for piece in match.group(1).split(","):
        lo, _, hi = piece.partition("-")
        if not hi:
            numbers = [lo]
        else:
            width = len(lo) if lo.startswith("0") else 0
            numbers = [str(n).zfill(width) for n in range(int(lo), int(hi) + 1)]
        for n in numbers:
            out.extend(prefix + n + tail for tail in _expand_one(rest))
    return out


def count_gpus(gres: str | None) -> int:
    """`gpu:4`, `gpu:a100:4(S:0-1)`, `gpu:a100:2,gpu:v100:1`, `(null)` -> GPU count."""
    if gres is None or gres.strip() in UNLIMITED_WORDS:
        return 0
    total = 0
    for entry in re.split(r",(?![^(]*\))", gres):
        entry = entry.split("(", 1)[0].strip()
        parts = entry.split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
        elif parts == ["gpu"]:
            total += 1
    return total


def parse_partitions(stdout: str) -> dict[str, PartitionLimits]:
    """`scontrol show partition --oneliner` -> {name: PartitionLimits}, in Slurm's order."""
    result: dict[str, PartitionLimits] = {}
    for line in stdout.splitlines():
        rec = parse_record(line)
        name = rec.get("PartitionName")
        if not name:
            continue
        result[name] = PartitionLimits(
            name=name,
            max_time=parse_slurm_time(rec.get("MaxTime", "UNLIMITED")),
            default_time=parse_slurm_time(rec.get("DefaultTime", "NONE")),
            max_nodes=_number(rec.get("MaxNodes")),
            max_cpus_per_node=_number(rec.get("MaxCPUsPerNode")),
            max_mem_per_node_mb=_number(rec.get("MaxMemPerNode")),
            max_mem_per_cpu_mb=_number(rec.get("MaxMemPerCPU")),
            def_mem_per_cpu_mb=_number(rec.get("DefMemPerCPU")),
            nodes=expand_hostlist(rec.get("Nodes", "")),
            state=rec.get("State", "UNKNOWN"),
            default=rec.get("Default", "NO").upper() == "YES",
            allow_groups=_names(rec.get("AllowGroups")),
            allow_accounts=_names(rec.get("AllowAccounts")),
            raw=MappingProxyType(rec),
        )
    return result


def parse_nodes(stdout: str) -> dict[str, NodeInfo]:
    """`scontrol show node --oneliner` -> {name: NodeInfo}."""
    result: dict[str, NodeInfo] = {}
    for line in stdout.splitlines():
        rec = parse_record(line)
        name = rec.get("NodeName")
        if not name:
            continue
        result[name] = NodeInfo(
            name=name,
            address=rec.get("NodeAddr") or name,
            hostname=rec.get("NodeHostName") or name,
            cpus=_number(rec.get("CPUTot")),
            real_memory_mb=_number(rec.get("RealMemory")),
            gpus=count_gpus(rec.get("Gres")),
            state=rec.get("State", "UNKNOWN"),
            partitions=tuple(p for p in rec.get("Partitions", "").split(",") if p),
            raw=MappingProxyType(rec),
        )
    return result


# -- why a partition cannot run anything now ----------------------------------------------------

# Node states in which a node takes no new job (sinfo prints them lower case, with a suffix such
# as `*` for "not responding" or `~` for powered down).
_UNAVAILABLE_STATES = {"drained": "drained", "draining": "draining", "drain": "drained",
                       "down": "down", "fail": "failed", "failing": "failing",
                       "maint": "in maintenance", "reserved": "reserved", "inval": "invalid",
                       "unknown": "not responding", "powered_down": "powered down"}


def build_node_states_argv(partition: str, node: str | None = None) -> list[str]:
    """One line per node of `partition` (or only `node`, for a job pinned to it): name, state,
    the admins' reason (last: it may hold `|`)."""
    where = ["-n", node] if node else []
    return ["sinfo", "-h", "-N", "-p", partition, *where, "-o", "%N|%T|%E"]


def partition_obstacle(partition: str, stdout: str, node: str | None = None) -> str | None:
    """A sentence when no node of `partition` (or the one `node` a job asked for) can take a job
    now, from `build_node_states_argv` output: "All nodes of partition debug are drained:
    maintenance test". None when some node can (then the job's own reason, such as busy nodes,
    is the truth) or when sinfo said nothing."""
    seen: dict[str, tuple[str, str]] = {}
    for line in stdout.splitlines():
        name, _, rest = line.partition("|")
        state, _, reason = rest.partition("|")
        if not name.strip():
            continue
        word = _UNAVAILABLE_STATES.get(state.strip().lower().rstrip("*~#!%$@^-+"))
        if word is None:
            return None  # a node that can take work: not the whole partition's problem
        seen[name.strip()] = (word, reason.strip() if reason.strip() not in ("none", "") else "")
    if not seen:
        return None
    states = {w for w, _ in seen.values()}
    word = states.pop() if len(states) == 1 else "down or drained"
    reasons = sorted({r for _, r in seen.values() if r})
    if node:
        sentence = f"Node {node} of partition {partition}, which this session asks for, is {word}"
    elif len(seen) > 1:
        sentence = f"All nodes of partition {partition} are {word}"
    else:
        sentence = f"The only node of partition {partition} is {word}"
    return sentence + (f": {'; '.join(reasons)}" if reasons else "")
