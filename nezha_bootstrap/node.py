"""This node, this run: the values that `run` and the flows carry unchanged from step to step."""

from __future__ import annotations

from typing import Final

from nezha_bootstrap.config import Config
from nezha_bootstrap.facts import Facts
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.report import Reporter


class ThisNode:
    """The validated config, the host facts, the paths under the root, and where progress is reported.

    What changes along a run (the generation once resolved, the state once loaded, the dashboard client)
    is passed beside it; a v1/v2 run's config with its probe port and TLS defaulted is a new ThisNode
    (`with_config`). A plain class, its fields Final (never compared, hashed or printed): a frozen dataclass
    costs ~1 ms of every run's start.
    """

    def __init__(self, config: Config, facts: Facts, paths: Paths, reporter: Reporter) -> None:
        self.config: Final = config
        self.facts: Final = facts
        self.paths: Final = paths
        self.reporter: Final = reporter

    def with_config(self, config: Config) -> ThisNode:
        """The same node with another config."""
        return ThisNode(config, self.facts, self.paths, self.reporter)
