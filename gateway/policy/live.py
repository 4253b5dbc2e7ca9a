"""The scheduler's live limits next to the policy's promises, and a cache for them.

A policy that promises more than the scheduler allows is the worst kind of error: the form offers
a walltime, the user asks for it, and sbatch refuses at submit (EnforcePartLimits) or the job sits
pending forever. `compare_limits` finds every such promise, for the partitions' own limits and for
each group's overrides; `compare_queue_limits` does the same against PBS's queues.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from gateway.policy.durations import format_memory
from gateway.policy.model import Limits, SitePolicy
from schedulers.durations import format_words
from schedulers.pbs import QueueLimits
from schedulers.slurm_partitions import NodeInfo, PartitionLimits


@dataclass(frozen=True)
class LimitProblem:
    partition: str
    field: str
    """The policy field: 'partitions.debug.max_walltime' or 'groups.hub-admins.limits.long.max_cpus'."""
    message: str
    severity: str = "error"
    """'error' (the policy promises more than the scheduler allows) or 'warning'."""


def _promises(policy: SitePolicy, name: str) -> Iterator[tuple[str, Limits]]:
    """Every set of limits the policy offers on partition `name`, with where it is written."""
    partition = policy.partitions[name]
    yield f"partitions.{name}", partition.limits
    for group, rule in policy.groups.items():
        if name in rule.partitions and name in rule.limits:
            yield f"groups.{group}.limits.{name}", partition.limits.override(rule.limits[name])


def compare_limits(policy: SitePolicy, live: Mapping[str, PartitionLimits],
                   nodes: Mapping[str, NodeInfo] | None = None) -> list[LimitProblem]:
    """Where the policy promises more than Slurm's partitions (and their nodes) allow."""
    problems: list[LimitProblem] = []
    for name, partition in policy.partitions.items():
        part = live.get(name)
        if part is None:
            known = ", ".join(live) or "none"
            problems.append(LimitProblem(name, f"partitions.{name}",
                                         f"Slurm has no partition {name!r} (it has: {known})."))
            continue
        if part.state.upper() != "UP":
            problems.append(LimitProblem(name, f"partitions.{name}",
                                         f"Slurm's partition {name!r} is {part.state}, not UP: jobs "
                                         "will not start there.", "warning"))
        members = [nodes[n] for n in part.nodes if nodes and n in nodes]
        if partition.node is not None and nodes is not None and partition.node not in part.nodes:
            problems.append(LimitProblem(name, f"partitions.{name}.node",
                                         f"Partition {name!r} pins node {partition.node!r}, which "
                                         f"Slurm does not list in that partition "
                                         f"({', '.join(part.nodes) or 'no nodes'})."))
        if partition.node is not None:
            members = [m for m in members if m.name == partition.node] or members
        for where, limits in _promises(policy, name):
            problems.extend(_compare_one(name, where, limits, part, members))
    return problems


def _compare_one(name: str, where: str, lim: Limits, part: PartitionLimits,
                 members: list[NodeInfo]) -> Iterator[LimitProblem]:
    def over(field: str, promised: str, allowed: str, source: str) -> LimitProblem:
        return LimitProblem(name, f"{where}.{field}",
                            f"{where}.{field} promises {promised}, but Slurm allows at most "
                            f"{allowed} on partition {name!r} ({source}).")

    if part.max_time is not None and lim.max_walltime > part.max_time:
        yield over("max_walltime", format_words(lim.max_walltime),
                   format_words(part.max_time), "MaxTime")
    if part.max_nodes is not None and lim.max_nodes > part.max_nodes:
        yield over("max_nodes", str(lim.max_nodes), str(part.max_nodes), "MaxNodes")
    if part.max_mem_per_node_mb is not None and lim.max_memory > part.max_mem_per_node_mb:
        yield over("max_memory", format_memory(lim.max_memory),
                   format_memory(part.max_mem_per_node_mb), "MaxMemPerNode")
    if part.max_cpus_per_node is not None and lim.max_cpus > part.max_cpus_per_node:
        yield over("max_cpus", f"{lim.max_cpus} cores", f"{part.max_cpus_per_node} cores",
                   "MaxCPUsPerNode")
    if part.max_mem_per_cpu_mb is not None and lim.max_memory > part.max_mem_per_cpu_mb * lim.max_cpus:
        yield over("max_memory", format_memory(lim.max_memory),
                   format_memory(part.max_mem_per_cpu_mb * lim.max_cpus),
                   f"MaxMemPerCPU {part.max_mem_per_cpu_mb} MB times {lim.max_cpus} cores")
    if not members:
        return
    # One job runs on one node (max_nodes 1): the biggest node in the partition bounds it.
    most_cpus = max((m.cpus or 0) for m in members)
    most_memory = max((m.real_memory_mb or 0) for m in members)
    most_gpus = max(m.gpus for m in members)
    nodes_word = "its largest node"
    if most_cpus and lim.max_cpus > most_cpus * lim.max_nodes:
        yield over("max_cpus", f"{lim.max_cpus} cores", f"{most_cpus * lim.max_nodes} cores",
                   f"{nodes_word} has {most_cpus}")
    if most_memory and lim.max_memory > most_memory * lim.max_nodes:
        yield over("max_memory", format_memory(lim.max_memory),
                   format_memory(most_memory * lim.max_nodes),
                   f"{nodes_word} has RealMemory={most_memory}")
    if lim.max_gpus > most_gpus * lim.max_nodes:
        yield over("max_gpus", f"{lim.max_gpus} GPUs", f"{most_gpus * lim.max_nodes} GPUs",
                   "from the nodes' Gres")


def compare_queue_limits(policy: SitePolicy, queues: Mapping[str, QueueLimits]) -> list[LimitProblem]:
    """Where the policy promises more than PBS's queues allow (`qstat -Qf -F json`, resources_max).

    A routing queue is compared by its own limits: they decide whether qsub accepts a job there.
    """
    problems: list[LimitProblem] = []
    for name in policy.partitions:
        queue = queues.get(name)
        if queue is None:
            known = ", ".join(queues) or "none"
            problems.append(LimitProblem(name, f"partitions.{name}",
                                         f"PBS has no queue {name!r} (it has: {known})."))
            continue
        if not queue.enabled:
            problems.append(LimitProblem(name, f"partitions.{name}",
                                         f"PBS's queue {name!r} is disabled: qsub refuses jobs there.",
                                         "warning"))
        elif not queue.started:
            problems.append(LimitProblem(name, f"partitions.{name}",
                                         f"PBS's queue {name!r} is not started: jobs queue there but do "
                                         "not run.", "warning"))
        for where, limits in _promises(policy, name):
            problems.extend(_compare_queue(name, where, limits, queue))
    return problems


def _compare_queue(name: str, where: str, lim: Limits, queue: QueueLimits) -> Iterator[LimitProblem]:
    def over(field: str, promised: str, allowed: str, source: str) -> LimitProblem:
        return LimitProblem(name, f"{where}.{field}",
                            f"{where}.{field} promises {promised}, but PBS allows at most {allowed} "
                            f"on queue {name!r} ({source}).")

    if queue.max_walltime is not None and lim.max_walltime > queue.max_walltime:
        yield over("max_walltime", format_words(lim.max_walltime),
                   format_words(queue.max_walltime), "resources_max.walltime")
    if queue.max_ncpus is not None and lim.max_cpus > queue.max_ncpus:
        yield over("max_cpus", f"{lim.max_cpus} cores", f"{queue.max_ncpus} cores", "resources_max.ncpus")
    if queue.max_mem_mb is not None and lim.max_memory > queue.max_mem_mb:
        yield over("max_memory", format_memory(lim.max_memory), format_memory(queue.max_mem_mb),
                   "resources_max.mem")
    if queue.max_ngpus is not None and lim.max_gpus > queue.max_ngpus:
        yield over("max_gpus", f"{lim.max_gpus} GPUs", f"{queue.max_ngpus} GPUs", "resources_max.ngpus")
    if queue.max_nodect is not None and lim.max_nodes > queue.max_nodect:
        yield over("max_nodes", str(lim.max_nodes), str(queue.max_nodect), "resources_max.nodect")
    # Minimums: a notebook job below them is refused at qsub.
    if queue.min_nodect is not None and queue.min_nodect > lim.max_nodes:
        yield LimitProblem(name, f"{where}.max_nodes",
                           f"Queue {name!r} takes only jobs of at least {queue.min_nodect} nodes "
                           f"(resources_min.nodect), but {where} allows at most {lim.max_nodes}: "
                           "every job there would be refused.")
    if queue.min_walltime is not None and lim.default_walltime < queue.min_walltime:
        yield LimitProblem(name, f"{where}.default_walltime",
                           f"{where}.default_walltime suggests {format_words(lim.default_walltime)},"
                           f" but queue {name!r} takes jobs of at least "
                           f"{format_words(queue.min_walltime)} (resources_min.walltime).")
