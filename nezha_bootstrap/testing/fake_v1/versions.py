"""How the dashboard versions the fake plays differ, in one place: each profile is a range of releases
(dashboard-v1-v2.md, "Detection"), and `version` picks one release inside it where a behaviour moved.

- v1.0-1.4: unknown /api/ paths answer HTTP 200; the settings are flat.
- v1.5-1.14: settings under `config`; the nz-jwt cookie carries no SameSite.
- v2.0: `tsdb_enabled` in the settings; the WAF counts bad JWTs and agent secrets (v2.0.0+); an agent
  secret may not take over another user's server (v2.0.10+); server items list `owner` (v2.0.14+).
- v2.1+: personal access tokens and their scopes (the read scope renamed after v2.1.1), the CSRF cookie.
"""

from __future__ import annotations

from typing import Any

from nezha_bootstrap.testing.fake_v0 import NOT_FOUND_HTML
from nezha_bootstrap.testing.fake_v1.wire import JSON_TYPE, NOT_FOUND_JSON, SITE_NAME, json_answer, unauthorized

PROFILES = ("v1.0-1.4", "v1.5-1.14", "v2.0", "v2.1+")
# The newest release of each profile's range: the ownership check exists from v2.0.10.
PROFILE_VERSIONS = {"v1.0-1.4": (1, 4, 0), "v1.5-1.14": (1, 14, 0), "v2.0": (2, 0, 10), "v2.1+": (2, 3, 1)}


class Generation:
    """The version-dependent behaviour of FakeV1, read from its `profile` and `version`."""

    profile: str
    version: tuple[int, int, int] | None

    @property
    def has_tokens(self) -> bool:
        return self.profile == "v2.1+"

    @property
    def read_scope(self) -> str:
        """The scope that lists servers: nezha:server:read on v2.1.0 and v2.1.1, later nezha:inventory:read."""
        return "nezha:server:read" if self.version in ((2, 1, 0), (2, 1, 1)) else "nezha:inventory:read"

    @property
    def dashboard_version(self) -> tuple[int, int, int]:
        return self.version or PROFILE_VERSIONS[self.profile]

    @property
    def counts_jwt_and_agent(self) -> bool:
        """Whether the WAF counts a bad JWT and a wrong agent secret: not on v1.x (observed on v1.14.14)."""
        return self.dashboard_version >= (2, 0, 0)

    @property
    def lists_owner(self) -> bool:
        """Server items carry `owner` (observed on v2.0.14, v2.1.5, v2.3.7; not on v1.14.14)."""
        return self.dashboard_version >= (2, 0, 14)

    @property
    def checks_ownership(self) -> bool:
        """A known server answers only its owner's agent secret (from v2.0.10)."""
        return self.dashboard_version >= (2, 0, 10)

    def jwt_cookie(self, jwt: str) -> str:
        """The nz-jwt cookie a login sets (observed): no HttpOnly; Max-Age = jwt_timeout (24 h by default);
        SameSite=Lax, except on v1.5-1.14."""
        return f"nz-jwt={jwt}; Path=/; Max-Age=86400" + ("; SameSite=Lax" if self.profile != "v1.5-1.14" else "")

    def other_api(self, method: str, path: str) -> Any:
        """The answer to a path outside the REST routes: the settings, and the 404s each version gives."""
        if path == "/api/v1/setting" and method == "GET":
            return json_answer({"success": True, "data": self.setting()})
        if path == "/api/v1/api-tokens" and self.profile == "v2.1+":
            return unauthorized()
        if path.startswith("/api/"):
            return (200 if self.profile == "v1.0-1.4" else 404), JSON_TYPE, NOT_FOUND_JSON.encode()
        return 404, "text/html", NOT_FOUND_HTML.encode()

    def setting(self) -> dict[str, Any]:
        """The data of GET /api/v1/setting as a guest sees it."""
        if self.profile == "v1.0-1.4":
            return {"site_name": SITE_NAME, "language": "en_US", "custom_code": ""}
        # The guest view of the real v1.14.14-v2.3.7: no `version` (only a logged-in view has it).
        data: dict[str, Any] = {"config": {"language": "en-US", "site_name": SITE_NAME,
                                           "ip_change_notification_group_id": 0, "cover": 0}}
        if self.profile in ("v2.0", "v2.1+"):
            data["tsdb_enabled"] = False
        return data
