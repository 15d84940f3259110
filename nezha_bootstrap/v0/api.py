"""The v0 register API: register, list, and the classifier of their answers (dashboard-v0-register.md)."""

from __future__ import annotations

import contextlib
import json
import re
import time
from typing import TYPE_CHECKING, Any, Callable

from nezha_bootstrap import __version__
from nezha_bootstrap.errors import AnsweredAsV1, DashboardRefused
from nezha_bootstrap.http import ANSWER_CAP, Answer, check_answer, fetch, json_body, looks_html
from nezha_bootstrap.interrupts import Stopped
from nezha_bootstrap.retry import Transient

if TYPE_CHECKING:
    import httpx  # its one home is http.py; here only for the client's type

LIST_CAP = ANSWER_CAP * 64  # a list of thousands of servers
SCAN_FIRST = 16  # ids in the first window of new_ids_named; each next window is twice the last
SCAN_IDS = 240  # at most this many ids read by new_ids_named (16 + 32 + 64 + 128): then one list instead
SECRET_SHAPE = re.compile(r"^[0-9A-Za-z]{18}\Z")  # v0 secrets: 18 of [0-9A-Za-z]; \Z: no trailing newline
_V1_BODY = {"error": "404 Not Found"}


def _token_hint(source: str) -> str:
    return (f"Check the token in {source}: it must be the whole token from the dashboard's API Token page, "
            "sent as is (no 'Bearer' or 'Token' word)")


# Observed on the real v0.20.13: with no row in its `users` table (nobody has logged in yet, or a database
# seeded by hand) the dashboard answers every token, valid ones included, with this same HTTP 200 + 403
# body; once a user exists the same token works at once, without a restart.
_NO_USER_HINT = (
    "A dashboard that has no user yet (nobody has logged in since it was installed) refuses every "
    "token this way, a valid one too: log in to the dashboard once, then run again"
)
V1_MESSAGE = (
    "this dashboard is v1 or newer; the v0 register API is not available there "
    "(v1/v2 agents enroll with an agent secret instead)"
)


def classify_common(answer: Answer, what: str, source: str = "NEZHA_TOKEN", cap: int = ANSWER_CAP) -> None:
    """Raise for answers every token endpoint shares: redirects, v1, disguised 403, 4xx, 5xx, 429, and an
    answer cut at `cap` (the cap it was read with)."""
    status = answer.status
    value = check_answer(answer, what, cap)
    parsed = value is not None
    if parsed and value == _V1_BODY and status in (200, 404):
        raise AnsweredAsV1(f"{what}: {V1_MESSAGE}")
    if parsed and isinstance(value, dict) and value.get("code") == 403:
        raise DashboardRefused(
            f"{what}: the dashboard refused the API token (HTTP {status} with a 403 body). {_token_hint(source)}. "
            f"{_NO_USER_HINT}"
        )
    if status == 404:
        if looks_html(answer):
            raise DashboardRefused(
                f"{what}: HTTP 404 with an HTML page: the dashboard is older than v0.20.12 (the register "
                "API is needed), or the URL does not point at the dashboard"
            )
        raise DashboardRefused(f"{what}: HTTP 404: the URL does not point at a v0 dashboard's API")
    if status == 400:
        raise DashboardRefused(
            f"{what}: HTTP 400: the dashboard could not parse the request; this is a bug in "
            f"nezha-bootstrap {__version__}, please report it"
        )
    if status in (401, 403):
        raise DashboardRefused(
            f"{what}: HTTP {status}: access refused (by the dashboard or a proxy in front of it). {_token_hint(source)}"
        )
    if status != 200:
        raise DashboardRefused(f"{what}: unexpected HTTP {status}")


def classify_register(answer: Answer, source: str = "NEZHA_TOKEN") -> str:
    """Return the node secret from a register answer, or raise exactly as dashboard-v0-register.md says.

    `source` is where the token came from (NEZHA_TOKEN, --token-file PATH): a refusal names it."""
    what = "register"
    classify_common(answer, what, source)
    if not answer.body.strip():
        raise DashboardRefused(f"{what}: HTTP 200 with an empty body, not a secret")
    if looks_html(answer):
        raise DashboardRefused(
            f"{what}: HTTP 200 with an HTML page, not a secret: the URL leads to a web page "
            "(login portal, proxy, or the dashboard's UI), not to the dashboard's API"
        )
    parsed, value = json_body(answer.body)
    if not parsed:
        # the bare secret the seed's text shows; utf-8 is decode's default and any case of it the same codec:
        value = answer.body.decode("utf-8", errors="replace").strip()  # pragma: no mutate - see the line above
    if isinstance(value, dict) and isinstance(value.get("secret"), str) and value.get("code") == 200:
        value = value["secret"]  # the full answer: the server was created, keep its secret
    if isinstance(value, dict):
        raise DashboardRefused(f"{what}: HTTP 200 with a JSON object that holds no secret (code {value.get('code')!r})")
    if not isinstance(value, str):
        raise DashboardRefused(f"{what}: HTTP 200 with a JSON {type(value).__name__}, not a secret")
    if value == "":
        raise DashboardRefused(f"{what}: HTTP 200 with an empty secret (\"\")")
    if not SECRET_SHAPE.match(value):
        raise DashboardRefused(
            f"{what}: HTTP 200, but the answer is not a secret of the dashboard's shape "
            f"(18 letters and digits; got {len(value)} characters)"
        )
    return value


def classify_list(answer: Answer, source: str = "NEZHA_TOKEN") -> list[dict[str, Any]]:
    """Return the servers of a list answer, or raise as for register."""
    what = "server list"
    classify_common(answer, what, source, LIST_CAP)
    parsed, value = json_body(answer.body)
    if not parsed or not isinstance(value, dict) or not isinstance(value.get("result"), list):
        raise DashboardRefused(f"{what}: HTTP 200, but not the dashboard's list envelope")
    return [item for item in value["result"] if isinstance(item, dict)]


class Dashboard:
    """The v0 token API of one dashboard. A plain class (never compared; its repr names no field, so never
    the token): a dataclass costs ~0.4 ms of a run's start."""

    def __init__(
        self,
        client: httpx.Client,
        base_url: str,
        token: str,
        source: str = "NEZHA_TOKEN",  # where the token came from: a refusal names it
    ) -> None:
        self.client = client
        self.base_url = base_url
        self.token = token
        self.source = source

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self.token}  # pragma: no mutate - the whole token, no scheme; names are any case

    def register(self, body: dict[str, str], seconds_left: float) -> str:
        """POST one register request; the secret, or Transient/DashboardRefused."""
        answer = fetch(
            self.client,
            "POST",  # pragma: no mutate - httpx upper-cases a method
            f"{self.base_url}/api/v1/server/register?simple=true",
            seconds_left=seconds_left, cap=ANSWER_CAP, ambiguous=True,
            headers={**self._headers(), "Content-Type": "application/json"},  # pragma: no mutate - names are any case
            content=json.dumps(body, ensure_ascii=False).encode(),  # pragma: no mutate - None is as false as False
        )
        return classify_register(answer, self.source)

    def servers(self, tag: str, seconds_left: float) -> list[dict[str, Any]]:
        """GET the servers under `tag` (creates nothing; checks the token)."""
        answer = fetch(
            self.client,
            "GET",  # pragma: no mutate - httpx upper-cases a method
            f"{self.base_url}/api/v1/server/list",
            seconds_left=seconds_left, cap=LIST_CAP, ambiguous=False,
            headers=self._headers(), params={"tag": tag},
        )
        return classify_list(answer, self.source)

    def server(self, server_id: int, seconds_left: float) -> dict[str, Any] | None:
        """GET /api/v1/server/details?id=N: that server's item, or None when there is none (deleted)."""
        answer = fetch(
            self.client,
            "GET",  # pragma: no mutate - httpx upper-cases a method
            f"{self.base_url}/api/v1/server/details",
            seconds_left=seconds_left, cap=ANSWER_CAP * 4, ambiguous=False,
            headers=self._headers(), params={"id": str(server_id)},
        )
        return next((item for item in classify_list(answer, self.source) if item.get("id") == server_id), None)

    def ids_named(self, name: str, tag: str, seconds_left: float) -> set[int]:
        """Ids of the servers called `name` under `tag`."""
        return self.survey(name, tag, seconds_left)[0]

    def survey(self, name: str, tag: str, seconds_left: float) -> tuple[set[int], int]:
        """One list under `tag`: the ids of the servers called `name`, and the highest id listed (0: none)."""
        items = [item for item in self.servers(tag, seconds_left) if isinstance(item.get("id"), int)]
        named = {int(item["id"]) for item in items if item.get("name") == name}
        return named, max((int(item["id"]) for item in items), default=0)

    def details(self, ids: range, seconds_left: float) -> list[dict[str, Any]]:
        """GET /api/v1/server/details?id=a,b,...: the servers of these ids that exist (v0.20.13 skips the others)."""
        answer = fetch(
            self.client,
            "GET",  # pragma: no mutate - httpx upper-cases a method
            f"{self.base_url}/api/v1/server/details?id={','.join(str(i) for i in ids)}",
            seconds_left=seconds_left, cap=ANSWER_CAP * 64, ambiguous=False, headers=self._headers(),
        )
        return classify_list(answer, self.source)

    def new_ids_named(self, name: str, tag: str, above: int, before: set[int], seconds_left: float) -> set[int] | None:
        """The servers called `name` under `tag` made since a list whose highest id was `above` (`before`: the
        ids so named then), read by id instead of listing the tag again (issue 19): v0.20.13's ids grow by one
        per server and are never reused (sqlite AUTOINCREMENT), so each new server has an id above `above`.
        The ids above it are read in growing windows until a window holds none (the end of the ids). None (the
        caller lists instead) when SCAN_IDS are read without reaching it (a dashboard that made that many
        servers since, under any tag), and when an empty window ends the search with nothing found: deleted
        servers leave gaps in the ids, and a gap as wide as a window looks like the end."""
        deadline = time.monotonic() + seconds_left
        start, size, found = above + 1, SCAN_FIRST, set[int]()
        while start <= above + SCAN_IDS:
            size = min(size, above + SCAN_IDS + 1 - start)
            items = self.details(range(start, start + size), max(deadline - time.monotonic(), 0.001))
            if not items:  # the end of the ids, or a gap of deleted ones: found nothing, the caller lists
                return found or None
            found |= {int(item["id"]) for item in items if isinstance(item.get("id"), int)
                      and item["id"] > above and item["id"] not in before
                      and item.get("name") == name and item.get("tag") == tag}
            start, size = start + size, size * 2
        return None


class Registration:
    """One node's registration, safe against a lost answer.

    Before the first POST it notes the servers already named like this node under its tag; after an
    ambiguous failure (the request may have been processed) it looks again before retrying, and stops
    if a new one appeared: the dashboard made a server whose secret never arrived.

    A plain class (never compared or printed): a dataclass costs ~0.5 ms of a run's start.
    """

    top: int  # the highest id in the list `before` came from, set with it: every server made since has a higher one

    def __init__(
        self,
        dashboard: Dashboard,
        body: dict[str, str],
        tag: str,
        # `keep` saves the secret the moment it arrives, inside `guard()`, where the caller may hold stop
        # signals: an answer that arrived is never lost to a stop. The POST itself is not guarded (a stop
        # must end the run within 2 s whatever the network does).
        keep: Callable[[str], None] = lambda secret: None,
        guard: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
        # `pending` records the registration durably before the first POST, with the ids seen before it:
        # a run killed while the answer is on its way leaves the next run what it needs to look for.
        pending: Callable[[set[int]], None] = lambda before: None,
    ) -> None:
        self.dashboard = dashboard
        self.body = body
        self.tag = tag
        self.keep = keep
        self.guard = guard
        self.pending = pending
        self.before: set[int] | None = None  # the ids so named under the tag, from the first attempt's list
        self.suspect = False  # an ambiguous failure: look again before the next POST

    def attempt(self, seconds_left: float) -> str:
        started = time.monotonic()
        name = self.body["Name"]
        if self.before is None:
            self.before, self.top = self.dashboard.survey(name, self.tag, seconds_left)
            self.pending(self.before)
        if self.suspect:
            new = self.dashboard.ids_named(name, self.tag, seconds_left) - self.before
            if new:
                ids = ", ".join(str(i) for i in sorted(new))
                raise DashboardRefused(
                    f"register: the answer was lost, and the dashboard now has a new server named "
                    f"{name!r} under tag {self.tag!r} (id {ids}), probably this node's, whose secret "
                    "never arrived. Not registering again: delete that server in the dashboard, then run again"
                )
            self.suspect = False
        left = max(seconds_left - (time.monotonic() - started), 0.001)
        try:
            secret = self.dashboard.register(self.body, left)
        except Transient as failure:
            self.suspect = self.suspect or failure.ambiguous
            raise
        except Stopped as stop:  # the POST may have made the server: say its secret may be lost
            raise Stopped(stop.signum, unanswered=True) from None
        with self.guard():  # from a complete answer to the saved secret: a stop waits for the save only
            self.keep(secret)
        return secret
