"""4. memory: peak RSS of full runs."""

from __future__ import annotations

import statistics

from benchmarks.common import Outcome, Plan, Target, base_env, measure
from benchmarks.overhead import bench_setup


def run(plan: Plan) -> Outcome:
    """Peak RSS of full runs, next to the floor the probe itself adds (its own RSS before exec)."""
    with bench_setup() as bench:
        samples = [bench.full_run(rss=True) for _ in range(plan.sizes.memory_runs)]
    floor = measure(["true"], base_env(), rss=True)
    peaks = [s.maxrss_kib / 1024 for s in samples]
    peak = round(max(peaks), 1)
    figures = {"runs": len(samples), "probe_floor_mib": round(floor.maxrss_kib / 1024, 1),
               "peak_rss_mib": {"max": peak, "median": round(statistics.median(peaks), 1)}}
    return Outcome(figures, [Target("memory: peak RSS of a full run", peak, 50.0, "MiB",
                                     "the largest of the runs (their own wait4 peak); issue 4's target")])

