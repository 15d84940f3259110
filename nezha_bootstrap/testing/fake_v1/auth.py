"""Who a request acts for: a JWT from POST /api/v1/login (on v2.1+ with its CSRF value), or a personal
access token `nzp_...` with scopes (v2.1+). Every failed credential goes to the WAF."""

from __future__ import annotations

import json
import secrets
from typing import Any

from nezha_bootstrap.testing.fake_v1.records import Token, new_agent_secret
from nezha_bootstrap.testing.fake_v1.versions import Generation
from nezha_bootstrap.testing.fake_v1.waf import Waf
from nezha_bootstrap.testing.fake_v1.wire import Request, credential_of, json_answer, json_object, unauthorized


def grants(scopes: tuple[str, ...], wanted: str) -> bool:
    """Whether `scopes` hold `wanted`; `resource:*` covers only its own resource's actions."""
    resource = wanted.rpartition(":")[0]
    return wanted in scopes or f"{resource}:*" in scopes


class Auth(Waf, Generation):
    """Logins, sessions and access tokens of FakeV1."""

    tokens: dict[str, Token]
    logins: dict[str, tuple[int, str]]
    sessions: dict[str, tuple[int, str]]

    def add_token(self, user: int = 1, scopes: tuple[str, ...] | None = None,
                  expires_in: float | None = None, value: str | None = None) -> str:
        """A personal access token `nzp_...` of `user` (v2.1+; `value`: this one, else a new one);
        default scopes: read + nezha:server:write."""
        if not self.has_tokens:
            raise ValueError(f"profile {self.profile} has no personal access tokens (v2.1.0+)")
        value = value or "nzp_" + new_agent_secret()
        chosen = scopes if scopes is not None else (self.read_scope, "nezha:server:write")
        expires = None if expires_in is None else self.clock() + expires_in
        self.tokens[value] = Token(value, user, tuple(chosen), expires)
        return value

    def add_login(self, user: int, username: str, password: str) -> None:
        """Let `username`/`password` log in as `user` (POST /api/v1/login)."""
        self.logins[username] = (user, password)

    def authenticate(self, request: Request, scope: str) -> tuple[int, Any]:
        """The user a request acts for, or the refusal to answer with."""
        credential = credential_of(request)
        if not credential:
            return 0, unauthorized()
        if credential.startswith("nzp_") and self.has_tokens:
            return self.check_token(credential, scope, request.ip)
        with self.lock:
            session = self.sessions.get(credential)
            if session is None:
                self.count_failure(request.ip, counted=self.counts_jwt_and_agent)
                return 0, unauthorized()
        unsafe = request.method not in ("GET", "HEAD", "OPTIONS")
        if unsafe and self.has_tokens and request.headers.get("x-csrf-token") != session[1]:
            return 0, json_answer({"error": "ApiErrorForbidden: missing or invalid CSRF token"}, 403)
        return session[0], None

    def check_token(self, value: str, scope: str, ip: str) -> tuple[int, Any]:
        with self.lock:
            token = self.tokens.get(value)
            if token is None or (token.expires_at is not None and token.expires_at <= self.clock()):
                self.count_failure(ip)
                return 0, json_answer({"error": "ApiErrorUnauthorized: invalid api token"}, 401)
        if not grants(token.scopes, scope):
            return 0, json_answer({"error": f"ApiErrorForbidden: api token lacks scope {scope}"}, 403)
        return token.user, None

    def login(self, request: Request) -> Any:
        form = json_object(request.body) or {}
        with self.lock:
            known = self.logins.get(str(form.get("username")))
            if known is None or known[1] != form.get("password"):
                self.count_failure(request.ip, login=True)
                return unauthorized()
            jwt, csrf = "eyJ" + secrets.token_urlsafe(24), secrets.token_urlsafe(24)
            self.sessions[jwt] = (known[0], csrf)
            self.forget_login_failures(request.ip)
        # The real cookies (observed): nz-jwt as the version sets it; nz-csrf (v2.1+) SameSite=Strict, its
        # value repeated in X-CSRF-Token.
        cookies = [self.jwt_cookie(jwt)]
        if self.has_tokens:
            cookies.append(f"nz-csrf={csrf}; Path=/; SameSite=Strict")
        answer = {"success": True, "data": {"token": jwt, "expire": "2099-01-01T00:00:00Z"}}
        return 200, "application/json; charset=utf-8", json.dumps(answer).encode(), {"Set-Cookie": cookies}

