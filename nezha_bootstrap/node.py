"""This node, this run: the values that `run` and the flows carry unchanged from step to step."""

from __future__ import annotations

from dataclasses import dataclass

from nezha_bootstrap.config import Config
from nezha_bootstrap.facts import Facts
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.report import Reporter


@dataclass(frozen=True)
class ThisNode:
    """The validated config, the host facts, the paths under the root, and where progress is reported.

    What changes along a run (the generation once resolved, the state once loaded, the dashboard client)
    is passed beside it; a v1/v2 run's config with its probe port and TLS defaulted is a new ThisNode.
    """

    config: Config
    facts: Facts
    paths: Paths
    reporter: Reporter
