"""The figures: one row per scenario, then the line the bar reads."""

from __future__ import annotations

from benchmarks.chaos.harness import Trial

COUNTERS = ("lost_servers", "orphan_jobs", "wrong_states", "http_5xx")


def totals(trials: list[Trial]) -> dict[str, int]:
    return {"trials": len(trials), **{c: sum(getattr(t, c) for t in trials) for c in COUNTERS}}


def table(trials: list[Trial]) -> str:
    rows = [f"{'scenario':<16} {'trials':>6} {'passed':>6} {'worst detection':>16}   "
            + " ".join(f"{c:>12}" for c in COUNTERS)]
    for scenario in dict.fromkeys(t.scenario for t in trials):
        mine = [t for t in trials if t.scenario == scenario]
        times = [t.detection for t in mine if t.detection is not None]
        worst = f"{max(times):.2f} s" if times else "-"
        rows.append(f"{scenario:<16} {len(mine):>6} {sum(t.passed for t in mine):>6} {worst:>16}   "
                    + " ".join(f"{sum(getattr(t, c) for t in mine):>12}" for c in COUNTERS))
    return "\n".join(rows)


def last_line(trials: list[Trial]) -> str:
    return " ".join(f"{k}={v}" for k, v in totals(trials).items())
