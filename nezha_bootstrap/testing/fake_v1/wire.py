"""HTTP plumbing of the fake v1/v2 REST API: routes, the request, answers as the real one words them.

Go's JSON binding errors are reproduced here, so a handler only says which field was wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

NOT_FOUND_JSON = '{"error":"404 Not Found"}'
REAL_IP_JSON = '{"error":"real ip header not found"}'
JSON_TYPE = "application/json; charset=utf-8"
SITE_NAME = "Nezha"
GUEST = 0  # the user a request without a credential acts as, where guests are allowed
WRITE_SCOPE = "nezha:server:write"
# route -> the scope a PAT needs ("read" stands for the version's read scope).
ROUTE_SCOPES = {"login": "", "list_servers": "read", "patch_server": WRITE_SCOPE, "list_groups": "read",
                "create_group": WRITE_SCOPE, "patch_group": WRITE_SCOPE, "delete_servers": "nezha:inventory:delete"}
_ROUTES = (
    ("POST", re.compile(r"/api/v1/login\Z"), "login"),
    ("GET", re.compile(r"/api/v1/server\Z"), "list_servers"),
    ("PATCH", re.compile(r"/api/v1/server/[^/]{1,40}\Z"), "patch_server"),
    ("GET", re.compile(r"/api/v1/server-group\Z"), "list_groups"),
    ("POST", re.compile(r"/api/v1/server-group\Z"), "create_group"),
    ("PATCH", re.compile(r"/api/v1/server-group/\d{1,18}\Z"), "patch_group"),
    ("POST", re.compile(r"/api/v1/batch-delete/server\Z"), "delete_servers"),
)


@dataclass(frozen=True)
class Request:
    """One REST request as a route handler sees it; `ip` is the WAF's idea of the client."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    ip: str


def route_of(method: str, path: str) -> str | None:
    return next((name for verb, pattern, name in _ROUTES if verb == method and pattern.match(path)), None)


def json_answer(value: dict[str, Any], status: int = 200) -> Any:
    return status, JSON_TYPE, json.dumps(value, separators=(",", ":")).encode()


def unauthorized() -> Any:
    """The JWT middleware's refusal: HTTP 200, and the realm is the site name, unquoted (observed)."""
    return (200, JSON_TYPE, b'{"error":"ApiErrorUnauthorized"}', {"WWW-Authenticate": f"JWT realm={SITE_NAME}"})


def credential_of(request: Request) -> str:
    """The credential a request carries: `Bearer X` (case as sent: the real one is case-sensitive), else nz-jwt."""
    header = request.headers.get("authorization", "")
    return header[len("Bearer "):] if header.startswith("Bearer ") else cookie_of(request, "nz-jwt")


def cookie_of(request: Request, name: str) -> str:
    for part in request.headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""


def json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


_FORM_TYPES = {"name": str, "note": str, "public_note": str, "display_index": int, "hide_for_guest": bool,
               "enable_ddns": bool, "ddns_profiles": list, "override_ddns_domains": dict}


_GO_TYPES = {"name": "string", "note": "string", "public_note": "string", "display_index": "int",
             "hide_for_guest": "bool", "enable_ddns": "bool", "ddns_profiles": "[]uint64",
             "override_ddns_domains": "map[uint64][]string"}


def _json_kind(value: Any) -> str:
    kinds = ((bool, "bool"), (str, "string"), ((int, float), "number"), (list, "array"), (dict, "object"))
    return next(word for kind, word in kinds if isinstance(value, kind))


def go_json_problem(body: bytes) -> tuple[Any, str | None]:
    """The JSON value of `body`, or the words of Go's decoder for the common malformed bodies (observed:
    `{bad` gives "invalid character 'b' looking for beginning of object key string")."""
    text = body.decode("utf-8", errors="replace")
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()):
            return None, "unexpected end of JSON input"
        looking = "object key string" if exc.msg.startswith("Expecting property name") else "value"
        return None, f"invalid character '{text[exc.pos]}' looking for beginning of {looking}"


def server_form(body: bytes) -> tuple[dict[str, Any], str | None]:
    """The eight fields PATCH /api/v1/server/:id writes; any left out is reset (observed on v1.14.14-v2.3.7).

    A malformed body or a field of the wrong JSON type: the refusal Go's binding words.
    """
    form, problem = go_json_problem(body)
    if problem is not None:
        return {}, problem
    if not isinstance(form, dict):
        return {}, f"json: cannot unmarshal {_json_kind(form)} into Go value of type model.ServerForm"
    written: dict[str, Any] = {}
    for key, kind in _FORM_TYPES.items():
        value = form.get(key)
        if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            return {}, (f"json: cannot unmarshal {_json_kind(value)} into Go struct field ServerForm.{key} "
                        f"of type {_GO_TYPES[key]}")
        written[key] = kind() if value is None else value
    return written, None
