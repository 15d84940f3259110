"""2. fleet: nodes register at once against a dashboard failing 50% of requests (503 and 429)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from benchmarks.common import Outcome, Plan, Target, summary
from benchmarks.nodes import SHARE_429, SHARE_503, DashboardProcess, Node, run_nodes

REGISTER_PATH = "/api/v1/server/register"


def run(plan: Plan) -> Outcome:
    """Both fault placements: on the register POST only, and on every request (list GET too)."""
    figures: dict[str, Any] = {}
    targets: list[Target] = []
    for label, only_path in (("register_only", REGISTER_PATH), ("all_requests", None)):
        figures[label] = fleet_variant(plan.sizes.fleet_nodes, only_path)
        result = figures[label]
        targets += [
            Target(f"fleet[{label}]: duplicates", result["duplicates"], 1, "", "the fake's servers per node name"),
            Target(f"fleet[{label}]: failures", result["failures"], 1, "", "nodes started (none may fail)"),
            # The requests a node needs depend on the injected faults: the figure is the ratio to the mean
            # the fault model implies, so that retries never multiply a failing dashboard's load.
            Target(f"fleet[{label}]: requests/node vs the fault model", result["requests_vs_model"], 1.5, "x",
                   f"the mean the injected faults imply ({result['expected_requests_per_node']:g} a node: "
                   "the list and the register, each retried on a fault)"),
        ]
    return Outcome(figures, targets)


def expected_requests(only_path: str | None) -> float:
    """Mean requests per node under the fault model: one list GET and one POST must each get through,
    and a request that meets a fault takes 1 / (1 - share) tries on average (the seeded total is one draw)."""
    tries = 1 / (1 - SHARE_503 - SHARE_429)
    return round((1 if only_path else tries) + tries, 3)


def fleet_variant(count: int, only_path: str | None) -> dict[str, Any]:
    dashboard = DashboardProcess(seed=4, only_path=only_path)
    nodes = [Node(f"fleet-{i:03d}") for i in range(count)]
    run_nodes(nodes, dashboard.url, deadline=120.0, spread=1.0, seed=2)
    seen = dashboard.finish()
    names = Counter(name for name, _ in seen["servers"])
    secret_of = dict(seen["servers"])
    paths = Counter(f"{method} {path}" for method, path in seen["requests"])
    registered = [n for n in nodes if n.secret is not None]
    return {
        "nodes": count,
        "faults_on": only_path or "every request",
        "registered": len(registered),
        "failures": count - len(registered),
        "errors": sorted({n.error for n in nodes if n.error})[:5],
        "servers": sum(names.values()),
        "nodes_with_exactly_one_server": sum(1 for n in nodes if names[n.name] == 1),
        "duplicates": sum(c - 1 for c in names.values() if c > 1),
        "secret_mismatches": sum(1 for n in registered if secret_of.get(n.name) != n.secret),
        "requests": len(seen["requests"]),
        "requests_by_path": dict(paths),
        "requests_per_node": round(len(seen["requests"]) / count, 3),
        "expected_requests_per_node": expected_requests(only_path),
        "requests_vs_model": round(len(seen["requests"]) / count / expected_requests(only_path), 3),
        "attempts_per_node": summary([float(n.attempts) for n in nodes]),
        "failed_attempts_by_reason": dict(Counter(why for n in nodes for why in n.failures).most_common(8)),
        "time_s": summary([n.finished - n.started for n in registered]),
    }

