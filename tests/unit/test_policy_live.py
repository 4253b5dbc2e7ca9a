"""Slurm's live limits (parsed from output captured on the lab) against the policy's promises."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.policy.live import compare_limits
from gateway.policy.load import load_policy, load_policy_text
from schedulers.slurm_partitions import (
    build_nodes_argv,
    build_partitions_argv,
    count_gpus,
    expand_hostlist,
    parse_nodes,
    parse_partitions,
    parse_record,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "slurm"
PARTITIONS = (FIXTURES / "scontrol_show_partition_oneliner_lab_22.05.8.txt").read_text()
NODES = (FIXTURES / "scontrol_show_node_oneliner_lab_22.05.8.txt").read_text()
DEMO_TEXT = (ROOT / "site_configs" / "demo.yaml").read_text()
DEMO = load_policy(ROOT / "site_configs" / "demo.yaml")


def test_argv() -> None:
    assert build_partitions_argv() == ["scontrol", "show", "partition", "--oneliner"]
    assert build_nodes_argv() == ["scontrol", "show", "node", "--oneliner"]


def test_lab_partitions_parse() -> None:
    parts = parse_partitions(PARTITIONS)
    assert list(parts) == ["debug", "long"]
    debug, long = parts["debug"], parts["long"]
    assert debug.max_time == timedelta(minutes=30) and debug.default_time == timedelta(minutes=10)
    assert long.max_time == timedelta(days=2) and long.default_time == timedelta(hours=1)
    assert debug.max_mem_per_node_mb == 8000 and long.max_mem_per_node_mb is None  # UNLIMITED
    assert debug.max_nodes == 1 and debug.max_cpus_per_node is None
    assert debug.def_mem_per_cpu_mb == 1000
    assert debug.nodes == ("c1", "c2") and debug.state == "UP"
    assert debug.default and not long.default
    assert debug.allow_groups is None and debug.allow_accounts is None
    assert debug.raw["TRES"] == "cpu=32,mem=32000M,node=2,billing=32"


def test_lab_nodes_parse() -> None:
    nodes = parse_nodes(NODES)
    assert set(nodes) == {"c1", "c2"}
    c1, c2 = nodes["c1"], nodes["c2"]
    assert (c1.address, c1.hostname) == ("127.0.0.1", "localhost")
    assert c2.hostname == "c2" and c2.address.startswith("10.")
    assert c1.cpus == 16 and c1.real_memory_mb == 16000 and c1.gpus == 0
    assert c1.partitions == ("debug", "long")
    assert c1.raw["OS"].startswith("Linux ")  # a value with spaces stays whole


def test_record_values_keep_spaces_and_equals() -> None:
    rec = parse_record("NodeName=n1 OS=Linux 6.1 #1 SMP Reason=Not responding [root@2024] "
                       "TRES=cpu=4,mem=1G")
    assert rec == {"NodeName": "n1", "OS": "Linux 6.1 #1 SMP", "Reason": "Not responding [root@2024]",
                   "TRES": "cpu=4,mem=1G"}


def test_hostlists_and_gres() -> None:
    assert expand_hostlist("c[1-2]") == ("c1", "c2")
    assert expand_hostlist("n[08-10,12],gpu1") == ("n08", "n09", "n10", "n12", "gpu1")
    assert expand_hostlist("r[1-2]-n[1-2]") == ("r1-n1", "r1-n2", "r2-n1", "r2-n2")
    assert expand_hostlist("(null)") == ()
    assert count_gpus("gpu:a100:4(S:0-1)") == 4
    assert count_gpus("gpu:a100:2,gpu:v100:1(S:0)") == 3
    assert count_gpus("(null)") == 0 and count_gpus("mps:100") == 0


def test_demo_fits_the_lab() -> None:
    assert compare_limits(DEMO, parse_partitions(PARTITIONS), parse_nodes(NODES)) == []


def test_promises_beyond_slurm_are_found() -> None:
    text = (DEMO_TEXT.replace("max_walltime: 30m ", "max_walltime: 2h ")
            .replace("max_memory: 8000M", "max_memory: 9G")
            .replace("    partitions: [debug, long]\n    max_servers: 3",
                     "    partitions: [debug, long]\n    limits:\n      long:\n        max_walltime: 3d\n"
                     "        max_cpus: 32\n    max_servers: 3"))
    problems = compare_limits(load_policy_text(text), parse_partitions(PARTITIONS), parse_nodes(NODES))
    messages = [p.message for p in problems]
    assert ("partitions.debug.max_walltime promises 2 hours, but Slurm allows at most 30 minutes on "
            "partition 'debug' (MaxTime).") in messages
    assert ("partitions.debug.max_memory promises 9 GB, but Slurm allows at most 8000 MB on partition "
            "'debug' (MaxMemPerNode).") in messages
    assert ("groups.hub-admins.limits.long.max_walltime promises 3 days, but Slurm allows at most "
            "2 days on partition 'long' (MaxTime).") in messages
    assert any(m.startswith("groups.hub-admins.limits.long.max_cpus promises 32 cores") and
               "its largest node has 16" in m for m in messages)
    # hpc-users narrows debug to 4 cores/4 GB: its own override promises nothing beyond Slurm.
    assert not any(p.field.startswith("groups.hpc-users") and "walltime" not in p.field
                   for p in problems)
    assert all(p.severity == "error" for p in problems)


def test_unknown_partition_and_pinned_node() -> None:
    text = DEMO_TEXT.replace("  long:\n    description: Long",
                             "  gpu:\n    max_walltime: 1h\n    max_cpus: 4\n    max_memory: 4G\n"
                             "  long:\n    node: c9\n    description: Long")
    problems = compare_limits(load_policy_text(text), parse_partitions(PARTITIONS), parse_nodes(NODES))
    messages = [p.message for p in problems]
    assert "Slurm has no partition 'gpu' (it has: debug, long)." in messages
    assert ("Partition 'long' pins node 'c9', which Slurm does not list in that partition (c1, c2)."
            in messages)


def test_down_partition_is_a_warning() -> None:
    live = parse_partitions(PARTITIONS.replace("State=UP", "State=DOWN", 1))
    (problem,) = compare_limits(DEMO, live, parse_nodes(NODES))
    assert problem.severity == "warning" and "is DOWN" in problem.message


def test_limits_are_frozen() -> None:
    part = parse_partitions(PARTITIONS)["debug"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        part.max_nodes = 5  # type: ignore[misc]
