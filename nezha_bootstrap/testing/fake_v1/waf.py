"""The dashboard's WAF: failed credentials per IP and the blocks they earn (rules: the package's docstring)."""

from __future__ import annotations

import threading
from typing import Callable

WAF_PAGE = "<!DOCTYPE html><html><body>you were blocked by nezha WAF</body></html>"


class Waf:
    """The WAF's counting and blocking, on FakeV1's `waf` and `login_failures`."""

    lock: threading.Lock
    clock: Callable[[], float]
    real_ip_header: str | None
    failed_credentials: int
    waf: dict[str, tuple[int, float]]
    login_failures: dict[str, int]

    def blocked(self, ip: str) -> bool:
        """Whether the WAF blocks `ip` now."""
        with self.lock:
            return self.waf.get(ip, (0, 0.0))[1] > self.clock()

    def count_failure(self, ip: str, counted: bool = True, login: bool = False) -> None:
        """One failed credential: the WAF blocks the IP for max(count^4, 3) s (caller holds the lock).

        `counted` False: a failure the real dashboard's WAF does not count (v1.x: bad JWTs, agents)."""
        self.failed_credentials += 1
        if self.real_ip_header and counted:
            count = self.waf.get(ip, (0, 0.0))[0] + 1
            self.waf[ip] = (count, self.clock() + max(count ** 4, 3))
            if login:
                self.login_failures[ip] = self.login_failures.get(ip, 0) + 1

    def forget_login_failures(self, ip: str) -> None:
        """A good login: the IP's login failures no longer count, its others do (caller holds the lock)."""
        forgotten = self.login_failures.pop(ip, 0)
        if forgotten and ip in self.waf:
            count, until = self.waf[ip]
            self.waf[ip] = (count - forgotten, until)

