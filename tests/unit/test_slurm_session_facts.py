"""What the sessions page needs from Slurm: why a partition runs nothing (sinfo's node states and
the admins' drain reasons, in words), a job's start and end, and the signal before the walltime.
The sinfo lines were printed by the lab's Slurm 22.05 (`sinfo -h -N -p debug -o '%N|%T|%E'`)."""

from datetime import datetime

from schedulers import pbs, slurm
from schedulers.slurm_partitions import build_node_states_argv, partition_obstacle

ONE_DRAINED = "c1|drained|maintenance test|x\nc2|idle|none\n"
BOTH_DRAINED = "c1|drained|maintenance test\nc2|drained|maintenance test\n"


def test_argv_names_the_partition_and_a_pinned_node():
    assert build_node_states_argv("debug") == ["sinfo", "-h", "-N", "-p", "debug", "-o", "%N|%T|%E"]
    assert build_node_states_argv("debug", "c1")[5:7] == ["-n", "c1"]


def test_every_node_drained_gives_the_admins_reason():
    assert partition_obstacle("debug", BOTH_DRAINED) == (
        "All nodes of partition debug are drained: maintenance test")


def test_a_node_that_can_work_means_no_obstacle():
    assert partition_obstacle("debug", ONE_DRAINED) is None
    assert partition_obstacle("debug", "") is None


def test_a_reason_may_hold_the_separator_and_a_pinned_node_is_named():
    text = partition_obstacle("debug", "c1|drained|maintenance test|x\n", node="c1")
    assert text == ("Node c1 of partition debug, which this session asks for, is drained: "
                    "maintenance test|x")


def test_mixed_states_and_flags():
    out = partition_obstacle("long", "c1|down*|Not responding\nc2|drained|disk swap\n")
    assert out == "All nodes of partition long are down or drained: Not responding; disk swap"
    assert partition_obstacle("long", "c1|idle*|none\n") is None  # not responding yet idle: wait


def test_running_job_carries_start_and_end_from_squeue():
    line = "42|RUNNING|None|c1|c1|2026-12-06T19:33:31|2026-12-06T19:36:31|0|"
    status = slurm.parse_status_lines(line)["42"]
    assert status.started == datetime(2026, 12, 6, 19, 33, 31)
    assert status.ends == datetime(2026, 12, 6, 19, 36, 31)
    pending = slurm.parse_status_lines("43|PENDING|Resources|||2026-12-06T20:00:00|N/A|0|")["43"]
    assert pending.started is None and pending.ends is None
    assert pending.estimated_start == datetime(2026, 12, 6, 20, 0)


def test_pbs_running_job_ends_at_start_plus_walltime():
    import json

    from tests.helpers.paths import SHARED

    doc = json.loads((SHARED / "fixtures/pbs/pbspro19_metacentrum_qstat_xf_json_running_2nodes.json")
                     .read_text())
    (job_id, job), = doc["Jobs"].items()
    status = pbs.status_from_job(job_id, job)
    assert status.started == datetime(2022, 10, 4, 21, 23, 33)
    assert status.ends == datetime(2022, 10, 4, 21, 24, 33)  # Resource_List.walltime 00:01:00


def test_slurm_description_as_reason_is_worded_and_asks_for_the_nodes():
    from gateway.hub.sessions import queue_words_need_nodes

    line = ("6|PENDING|Nodes required for job are DOWN, DRAINED or reserved for jobs in higher "
            "priority partitions|||N/A|N/A|0|")  # the lab's squeue with c1 and c2 drained
    status = slurm.parse_status_lines(line)["6"]
    assert status.reason_text.startswith("Queued: the nodes this job needs are down, drained")
    assert queue_words_need_nodes(status)


def test_the_job_asks_for_its_end_signal_only_with_a_walltime():
    from datetime import timedelta

    from schedulers.model import JobRequest

    script = slurm.build_script(JobRequest(script="true", walltime=timedelta(minutes=3),
                                           end_signal_seconds=30))
    # USR2: jupyter_server in the job takes SIGUSR1 for itself.
    assert "#SBATCH --signal=B:USR2@30" in script.splitlines()
    assert "--signal" not in slurm.build_script(JobRequest(script="true", end_signal_seconds=30))
