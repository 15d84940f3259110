"""1. recovery: nodes start while the dashboard's port is closed; it comes up after `recovery_down` s."""

from __future__ import annotations

import threading
import time

from benchmarks.common import LOOPBACK, PROCESS_TIMEOUT, Outcome, Plan, Target, free_port, summary
from benchmarks.nodes import DashboardProcess, Node, run_nodes


def run(plan: Plan) -> Outcome:
    """Nodes start while the port is closed; the dashboard comes up after `recovery_down` seconds."""
    port = free_port()
    sizes = plan.sizes
    nodes = [Node(f"recovery-{i:02d}") for i in range(sizes.recovery_nodes)]
    deadline = sizes.recovery_down + 60.0
    released = threading.Event()
    worker = threading.Thread(target=run_nodes, args=(nodes, f"http://{LOOPBACK}:{port}", deadline, 0.0, 1, released))
    worker.start()
    if not released.wait(PROCESS_TIMEOUT):
        raise RuntimeError("the recovery nodes did not start")
    time.sleep(sizes.recovery_down)
    dashboard = DashboardProcess(port=port)
    worker.join(deadline + 60.0)
    seen = dashboard.finish()
    after_up = [n.finished - dashboard.up for n in nodes if n.secret is not None]
    failures = sum(1 for n in nodes if n.secret is None)
    up_to_registered = summary(after_up)
    figures = {
        "nodes": len(nodes), "down_s": sizes.recovery_down, "registered": len(after_up),
        "failures": failures, "servers": len(seen["servers"]),
        "attempts_per_node": summary([float(n.attempts) for n in nodes]),
        "up_to_registered_s": up_to_registered,
    }
    return Outcome(figures, [Target("recovery: p95 up->registered", up_to_registered["p95"], 5.0, "s",
                                    "the moment the dashboard listened; issue 4's target"),
                             Target("recovery: failures", failures, 1, "", "nodes started (none may fail)")])

