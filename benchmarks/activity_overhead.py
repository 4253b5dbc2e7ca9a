"""What the activity recorder adds to each execution, as JupyterLab drives a kernel.

Two real jupyter_servers on loopback (as nobody), one with the recorder (gateway.job.activity,
code kept as `hash`, the default) and one without, each with a python3 kernel in a notebook
session and a websocket speaking JupyterLab's v1 protocol. Trivial executions go to one server
then the other, in turns (the order swapped every turn), so that the machine's other load falls
on both alike. Latency is the time from sending the execute_request to having both the
execute_reply and the kernel's idle status, as JupyterLab marks a cell done.

    python -m benchmarks.activity_overhead [--executions 2000]

Prints each side's p50/p99, the added latency (with - without) at p50 and p99, and last
`ratio=` (total time with / total time without). Target: ratio <= 1.05, p99 added < 1 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from gateway.lab.jupyter import V1, KernelClient, Server, jupyter_server


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def open_client(server: Server) -> KernelClient:
    session = server.api("POST", "/api/sessions", {"path": "bench.ipynb", "type": "notebook",
                                                   "kernel": {"name": "python3"}})
    return KernelClient(server, session["kernel"]["id"], V1)


def timed(client: KernelClient, i: int) -> float:
    start = time.perf_counter()
    client.execute("x = 1", cell_id=f"cell-{i % 50}")
    return time.perf_counter() - start


def run(executions: int, warmup: int) -> int:
    with jupyter_server() as with_rec, jupyter_server(recorder=False) as without:
        clients = {"with": open_client(with_rec), "without": open_client(without)}
        for i in range(warmup):
            for client in clients.values():
                timed(client, i)
        times: dict[str, list[float]] = {"with": [], "without": []}
        for i in range(executions):
            order = ("with", "without") if i % 2 == 0 else ("without", "with")
            for name in order:
                times[name].append(timed(clients[name], i))
        for client in clients.values():
            client.close()
        recorded = sum(1 for r in with_rec.records() if r["kind"] == "execution")
    ms = {k: [t * 1000 for t in v] for k, v in times.items()}
    for name in ("with", "without"):
        print(f"{name:>8} recorder: p50 {percentile(ms[name], 0.5):.3f} ms  "
              f"p99 {percentile(ms[name], 0.99):.3f} ms  mean {statistics.fmean(ms[name]):.3f} ms")
    print(f"executions per side: {executions} (+{warmup} warm-up); recorded: {recorded}")
    print(f"added p50: {percentile(ms['with'], 0.5) - percentile(ms['without'], 0.5):+.3f} ms")
    print(f"added p99: {percentile(ms['with'], 0.99) - percentile(ms['without'], 0.99):+.3f} ms")
    print(f"ratio={sum(ms['with']) / sum(ms['without']):.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args(argv)
    return run(args.executions, args.warmup)


if __name__ == "__main__":
    sys.exit(main())
