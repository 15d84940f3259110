"""The operator's side of `reconcile`: credentials, and a session with a v1/v2 dashboard built on v1.api.

Credentials are held in memory only; v1.api registers the token, the JWT and the CSRF value with
`redact` the moment it holds them, and the password is registered here before any request. A refused
credential (HTTP 401/403, or `ApiErrorUnauthorized`) is never retried: the dashboard's WAF counts
every failure and blocks the address for max(count^4, 3) s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nezha_bootstrap import redact
from nezha_bootstrap.config import ACCESS_TOKEN_RE
from nezha_bootstrap.errors import DashboardRefused, DashboardUnreachable
from nezha_bootstrap.fleet.reconcile import Server
from nezha_bootstrap.generation import Generation, detect, http_sender
from nezha_bootstrap.retry import Notify, with_retries
from nezha_bootstrap.v1.api import Group, V2Api, login

if TYPE_CHECKING:
    from pathlib import Path

    import httpx  # its one home is http.py; here only for the client's type

    from nezha_bootstrap.fleet.manifest import Manifest



@dataclass(frozen=True)
class Credentials:
    """A personal access token (v2.1+) or a user name and password (every v1/v2)."""

    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ReconcileTarget:
    """`reconcile`'s validated inputs: where, with which credentials, and the manifest."""

    url: str
    deadline: float
    ca_bundle: Path | None
    credentials: Credentials
    manifest: Manifest


def credential_problems(creds: Credentials) -> list[str]:
    """What is wrong with the credentials as given (no request is made for these)."""
    if creds.token and creds.username:
        return ["give either an access token (NEZHA_TOKEN / --token-file) or --username, not both"]
    if not creds.token and not creds.username:
        return ["give an access token (NEZHA_TOKEN or --token-file; v2.1+) or --username (a password login)"]
    if creds.token and not ACCESS_TOKEN_RE.match(creds.token):
        return ["the access token must look like nzp_ followed by 32 letters and digits (Settings, API Tokens "
                "on a v2.1+ dashboard); a v0 API token or an agent secret does not work here"]
    if creds.username is not None and not creds.password:
        return ["the password is empty"]
    return []


@dataclass
class Session:
    """reconcile.Api over v1.api.V2Api: the same calls, in reconcile's data types."""

    api: V2Api

    def servers(self) -> list[Server]:
        return [Server.from_api(item) for item in self.api.servers()]

    def groups(self) -> list[Group]:
        return self.api.groups()

    def patch_server(self, server_id: int, form: dict[str, Any]) -> None:
        self.api.patch_server(server_id, form)

    def create_group(self, name: str, members: list[int]) -> None:
        self.api.create_group(name, members)

    def patch_group(self, group_id: int, name: str, members: list[int]) -> None:
        self.api.set_group(group_id, name, members)


def open_session(client: httpx.Client, base_url: str, creds: Credentials, deadline: float,
                 notify: Notify) -> tuple[Session, Generation]:
    """Tell the generation (no credential sent), then authenticate as that generation allows."""
    generation = with_retries(lambda left: detect(http_sender(client, base_url), left), deadline=deadline,
                              what="generation detection", give_up=DashboardUnreachable, notify=notify)
    if generation.is_v0:
        raise DashboardRefused(
            "this is a v0 dashboard: reconcile is for v1/v2 dashboards (on v0, `run` names the server when "
            "it registers it)"
        )
    if creds.token:
        if not generation.has_access_tokens:
            raise DashboardRefused(
                f"the dashboard is {generation.value}: access tokens exist from v2.1.0 on; log in with "
                "--username (the password is asked for, or read from --password-file)"
            )
        return Session(V2Api(client, base_url, creds.token, deadline=deadline, notify=notify)), generation
    redact.register(creds.password)
    api = login(client, base_url, str(creds.username), str(creds.password), deadline, notify)
    return Session(api), generation
