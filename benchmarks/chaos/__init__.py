"""Faults on the real lab, in figures (issue #16): `python -m benchmarks.chaos`.

    python -m benchmarks.chaos [--lab-dir DIR] [--trials N] [--trials-of SCENARIO=N] [--seed S]
                               [--ctld-down SECONDS] [--directory-down SECONDS]
                               [--scenarios hub_kill,proxy_kill,...]

Brings up (or reuses) a two-node lab and a LabHub in reverse mode with named servers and LDAP
login (the lab's slapd, then a replica the suite starts), then breaks
things while alice's and bob's servers are being made or used, each scenario `--trials` times with
randomly chosen timing (the seed is printed; the same seed gives the same timings):

- hub_kill: the hub SIGKILLed while its servers are submitted, queued, starting, just reported
  (their address known, not yet answering) or running, then a
  new hub made on the same state directory (as `hpcgate demo` started again); 20 trials unless
  `--trials-of hub_kill=N`;
- proxy_kill: the proxy (nginx or configurable-http-proxy) SIGKILLed, its main process alone or
  with its workers; the hub's check brings a new one back with every route;
- ctld_down: slurmctld stopped for `--ctld-down` seconds, then started again;
- walltime: a server that reaches its walltime ends with the reason in words;
- node_lost: c2's slurmd killed and the node marked down under a running server;
- tunnel_restart: the tunnel endpoint (and its sshd sessions) restarted under running servers;
- directory_down: the lab's slapd stopped (logins through the replica), then the replica too
  (logins told "The directory is unavailable", servers untouched), then one back;
- out_of_memory: a 512 MB server made to read a 300-450 MB file whole (the contents API): the
  lab's task/cgroup memory limit kills it, Slurm records OUT_OF_MEMORY, the user is told;
- home_full: carol's home a small tmpfs, full: her spawn is refused in words, nothing left.

The pieces: `harness` (the lab, the hub, its API, what a trial records), `scenarios` (one function
per fault), `report` (the table and the last line,
`trials=N lost_servers=0 orphan_jobs=0 wrong_states=0 http_5xx=0`), `__main__` (the command).
"""

from benchmarks.chaos.harness import Chaos, Trial
from benchmarks.chaos.report import last_line, table
from benchmarks.chaos.scenarios import SCENARIOS, run_scenarios

__all__ = ["SCENARIOS", "Chaos", "Trial", "last_line", "run_scenarios", "table"]
