"""firstboot/zipapp.py and the fetcher the zipapp user-data writes: it puts only the pinned file in place.

The fetcher under test is the text the rendered user-data carries (write_files), run against an
HTTP server on 127.0.0.1: in this process with a fake clock for the retry and deadline rules, and
as a real `python3 -I` child for the download itself.
"""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from nezha_bootstrap.firstboot import render, zipapp

FETCHER = "/opt/nezha-bootstrap/bin/nezha-bootstrap-fetch"
PYZ = b"#!/usr/bin/env python3\nPK... the zipapp's bytes\n" * 1000
PYZ_SHA256 = hashlib.sha256(PYZ).hexdigest()


def fetcher_text() -> str:
    """The fetcher exactly as the zipapp user-data writes it on a node (`render` leaves comments out)."""
    data = yaml.safe_load(render.cloud_init_pyz("", "https://example.test/x.pyz", PYZ_SHA256, comments=False))
    [text] = [f["content"] for f in data["write_files"] if f["path"] == FETCHER]
    return str(text)


# --- a loopback server that answers from a script ------------------------------------------------

@dataclass
class Origin:
    """Answers, in order, each request with the next of `script` (then the last one again)."""

    script: list[Any]
    requests: list[str] = field(default_factory=list)
    url: str = ""

    def next(self) -> Any:
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


def _handler(origin: Origin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            origin.requests.append(self.path)
            answer = origin.next()
            if answer == "drop":
                self.close_connection = True
                self.connection.close()
                return
            if isinstance(answer, int):
                self.send_error(answer)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    return Handler


@pytest.fixture
def origin() -> Iterator[Origin]:
    state = Origin([PYZ])
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}/dl/nezha-bootstrap.pyz"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


# --- the fetcher in this process, on a fake clock ------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class Fetch:
    module: types.ModuleType
    clock: FakeClock
    source: Path
    target: Path

    def __call__(self, url: str, sha256: str = PYZ_SHA256, **extra: Any) -> int:
        self.source.write_text(json.dumps({"url": url, "sha256": sha256, **extra}))
        return int(self.module.main(["nezha-bootstrap-fetch", str(self.source), str(self.target)]))


@pytest.fixture
def fetch(tmp_path: Path) -> Fetch:
    module = types.ModuleType("nezha_bootstrap_fetch")
    exec(compile(fetcher_text(), FETCHER, "exec"), module.__dict__)
    clock = FakeClock()
    module.time = clock  # type: ignore[attr-defined]  # the fetcher's only use of time: monotonic and sleep
    return Fetch(module, clock, tmp_path / "pyz-source.json", tmp_path / "opt" / "nezha-bootstrap.pyz")


def leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p != target)


def test_the_pinned_file_is_put_in_place_executable(fetch: Fetch, origin: Origin) -> None:
    assert fetch(origin.url) == 0

    assert fetch.target.read_bytes() == PYZ
    assert stat.S_IMODE(fetch.target.stat().st_mode) == 0o755
    assert origin.requests == ["/dl/nezha-bootstrap.pyz"]
    assert leftovers(fetch.target) == []


def test_failed_attempts_are_retried_with_growing_pauses(fetch: Fetch, origin: Origin) -> None:
    origin.script = [503, "drop", 404, PYZ]

    assert fetch(origin.url) == 0

    assert len(origin.requests) == 4
    assert fetch.clock.sleeps == [2.0, 4.0, 8.0]
    assert fetch.target.read_bytes() == PYZ


def test_a_file_with_another_hash_is_refused_at_once_and_nothing_is_left(fetch: Fetch, origin: Origin,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    origin.script = [b"an attacker's or a stale file"]

    assert fetch(origin.url) == 1

    assert not fetch.target.exists() and leftovers(fetch.target) == []
    assert len(origin.requests) == 1, "a mismatch is not retried in the same run: the unit's restart does"
    assert "SHA-256 mismatch" in capsys.readouterr().err


def test_a_file_already_in_place_with_the_hash_is_kept_without_a_request(fetch: Fetch, origin: Origin) -> None:
    fetch.target.parent.mkdir()
    fetch.target.write_bytes(PYZ)

    assert fetch(origin.url) == 0

    assert origin.requests == []


def test_a_file_in_place_with_another_hash_is_replaced(fetch: Fetch, origin: Origin) -> None:
    fetch.target.parent.mkdir()
    fetch.target.write_bytes(b"an older release")

    assert fetch(origin.url) == 0

    assert fetch.target.read_bytes() == PYZ


@pytest.mark.parametrize(("extra", "requests"), [({"attempts": 3}, 3), ({"attempts": 50, "deadline": 10}, 3)],
                         ids=["attempts", "deadline"])
def test_the_attempts_and_the_deadline_bound_the_fetch(fetch: Fetch, origin: Origin, extra: dict[str, Any],
                                                       requests: int, capsys: pytest.CaptureFixture[str]) -> None:
    origin.script = [503]

    assert fetch(origin.url, **extra) == 1

    assert len(origin.requests) == requests
    assert fetch.clock.now <= extra.get("deadline", 120)
    assert "gave up" in capsys.readouterr().err
    assert not fetch.target.exists()


def test_an_answer_larger_than_the_cap_is_refused(fetch: Fetch, origin: Origin,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    fetch.module.MAX_BYTES = len(PYZ) - 1  # type: ignore[attr-defined]

    assert fetch(origin.url, attempts=1) == 1

    assert f"the answer is larger than {len(PYZ) - 1} bytes" in capsys.readouterr().err
    assert not fetch.target.exists() and leftovers(fetch.target) == []


def test_an_answer_at_the_cap_is_put_in_place(fetch: Fetch, origin: Origin) -> None:
    fetch.module.MAX_BYTES = len(PYZ)  # type: ignore[attr-defined]

    assert fetch(origin.url, attempts=1) == 0

    assert fetch.target.read_bytes() == PYZ and leftovers(fetch.target) == []


def test_messages_never_show_credentials_or_a_query(fetch: Fetch, origin: Origin,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    origin.script = [403]
    url = origin.url.replace("http://", "http://user:pa55word@") + "?X-Amz-Signature=s1gnature"

    assert fetch(url, attempts=2) == 1

    err = capsys.readouterr().err
    assert origin.url in err  # http://127.0.0.1:PORT/dl/nezha-bootstrap.pyz: the port too
    assert "pa55word" not in err and "s1gnature" not in err


@pytest.mark.parametrize(("url", "shown"), [
    ("http://user:pw@127.0.0.1:21180/dl/x.pyz?sig=1#f", "http://127.0.0.1:21180/dl/x.pyz"),
    ("https://[::1]:8443/x.pyz", "https://[::1]:8443/x.pyz"),
    ("https://downloads.example.test/x.pyz", "https://downloads.example.test/x.pyz"),
])
def test_the_fetchers_messages_show_the_host_and_port_but_no_credentials(fetch: Fetch, url: str, shown: str) -> None:
    assert fetch.module.shown(url) == shown


@pytest.mark.parametrize("source", [{"url": "ftp://x/y", "sha256": PYZ_SHA256}, {"url": "https://x/y", "sha256": "ab"},
                                    {"sha256": PYZ_SHA256}, "not json"])
def test_a_bad_source_file_is_exit_2_and_fetches_nothing(fetch: Fetch, origin: Origin, source: Any) -> None:
    fetch.source.write_text(source if isinstance(source, str) else json.dumps(source))

    assert fetch.module.main(["nezha-bootstrap-fetch", str(fetch.source), str(fetch.target)]) == 2

    assert origin.requests == []


# --- the fetcher as the node runs it: python3 -I, real time --------------------------------------

def run_fetcher(tmp_path: Path, url: str, sha256: str, attempts: int = 2,
                deadline: float = 20) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "nezha-bootstrap-fetch"
    script.write_text(fetcher_text())
    source = tmp_path / "pyz-source.json"
    source.write_text(json.dumps({"url": url, "sha256": sha256, "attempts": attempts, "deadline": deadline}))
    target = tmp_path / "opt" / "nezha-bootstrap.pyz"
    return subprocess.run([sys.executable, "-I", str(script), str(source), str(target)], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})


@pytest.mark.integration
def test_the_node_python_downloads_retries_and_checks(tmp_path: Path, origin: Origin) -> None:
    origin.script = [503, PYZ]
    started = time.monotonic()

    done = run_fetcher(tmp_path, origin.url, PYZ_SHA256)

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "opt" / "nezha-bootstrap.pyz").read_bytes() == PYZ
    # the documented pause after attempt 1 is 2 s; 2 s more at most for two python3 starts and the answers
    assert len(origin.requests) == 2 and 2 <= time.monotonic() - started < 2 + 2
    assert "installed" in done.stderr


@pytest.mark.integration
def test_the_node_python_refuses_a_mismatch_with_exit_1(tmp_path: Path, origin: Origin) -> None:
    done = run_fetcher(tmp_path, origin.url, "0" * 64)

    assert done.returncode == 1
    assert "SHA-256 mismatch" in done.stderr
    assert list((tmp_path / "opt").iterdir()) == []


@pytest.mark.integration
def test_an_https_certificate_that_does_not_verify_is_a_failed_attempt(tmp_path: Path) -> None:
    import ssl

    import trustme

    from nezha_bootstrap.testing.fake_v0 import FakeDashboard, serve

    fake = FakeDashboard("T0kenT0kenT0kenT0kenT0kenT0ken32")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)  # a private CA that no trust store holds
    with serve(fake, ssl_context=context) as running:
        done = run_fetcher(tmp_path, f"{running.url}/install.sh", fake.script_sha256)

    assert done.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in done.stderr


# --- choosing the install --------------------------------------------------------------------------

NONE: dict[str, Any] = {"package": None, "pip_options": (), "pyz_url": None, "pyz_sha256": None, "pyz": None}


@pytest.mark.parametrize(("given", "install"), [
    ({"pyz_url": "https://x.test/a.pyz", "pyz_sha256": "AB" * 32}, zipapp.Pinned("https://x.test/a.pyz", "ab" * 32)),
    ({"package": "nezha-bootstrap==1.0", "pip_options": ("--no-index",)},
     zipapp.Pip(("--no-index", "nezha-bootstrap==1.0"))),
])
def test_choose_gives_the_zipapp_or_pip(given: dict[str, Any], install: zipapp.Install) -> None:
    assert zipapp.choose("cloud-init", **{**NONE, **given}) == (install, [])


@pytest.mark.parametrize("kind", ["env", "cloud-init-minimal"])
def test_choose_installs_nothing_for_the_other_kinds(kind: str) -> None:
    assert zipapp.choose(kind, **NONE) == (None, [])


def test_read_pyz_refuses_a_file_larger_than_the_fetchers_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.pyz"
    path.write_bytes(b"x" * 100)
    monkeypatch.setattr(zipapp, "MAX_PYZ_BYTES", 10)

    with pytest.raises(ValueError, match="larger than"):
        zipapp.read_pyz(path)


# --- issue 18: a wall clock per attempt, redirects left unread, leftovers swept -----------------------

@pytest.mark.integration
@pytest.mark.parametrize("mode", ["header_trickle", "body_trickle", "continue"])
def test_a_trickle_at_1_byte_a_second_ends_at_the_fetchers_deadline(tmp_path: Path, mode: str) -> None:
    from tests.hostile import HostileServer, Route

    with HostileServer(Route(mode), interval=1.0) as server:
        started = time.monotonic()
        done = run_fetcher(tmp_path, f"{server.url}/x.pyz", PYZ_SHA256, attempts=5, deadline=3)
        seconds = time.monotonic() - started

    assert done.returncode == 1, done.stderr
    assert seconds < 3 + 2  # the deadline plus 2 s at most; before: 75 s and more (a socket timeout bounds one read)
    assert "no complete answer before the deadline" in done.stderr
    assert sorted(p.name for p in (tmp_path / "opt").iterdir()) == []  # the attempt's temporary file is gone


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["redirect_endless", "redirect_bomb"])
def test_a_redirect_is_followed_without_reading_its_body(tmp_path: Path, mode: str) -> None:
    from tests.hostile import HostileServer, Route, bomb

    routes = {"/x.pyz": Route(mode, location="/storage/x.pyz", body=bomb(64 << 20)),
              "/storage/x.pyz": Route("ok", body=PYZ)}
    with HostileServer(Route("ok"), routes=routes) as server:
        started = time.monotonic()
        done = run_fetcher(tmp_path, f"{server.url}/x.pyz", PYZ_SHA256, attempts=1, deadline=10)

    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 3
    assert (tmp_path / "opt" / "nezha-bootstrap.pyz").read_bytes() == PYZ


def test_a_redirect_to_another_protocol_is_a_failed_attempt(fetch: Fetch) -> None:
    from tests.hostile import HostileServer, Route

    with HostileServer(Route("redirect", location="ftp://127.0.0.1:20999/x.pyz")) as server:
        assert fetch(f"{server.url}/x.pyz", attempts=1) == 1

    assert not fetch.target.exists()


def test_what_a_killed_attempt_left_is_removed_at_the_next_start(fetch: Fetch, origin: Origin) -> None:
    fetch.target.parent.mkdir(parents=True)
    fetch.target.write_bytes(PYZ)
    (fetch.target.parent / ".fetch-k1ll3d").write_bytes(b"half a zipapp")

    assert fetch(origin.url) == 0

    assert leftovers(fetch.target) == []
    assert origin.requests == []  # the file in place has the hash: still no request
