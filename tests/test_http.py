"""http.py's promises read back: the https -> http redirect refusal in any spelling, and each size cap."""

from __future__ import annotations

import tempfile

import httpx
import pytest

from nezha_bootstrap import http
from nezha_bootstrap.errors import InstallerFailed

RELEASE = "https://release.test/v1/nezha-agent_linux_amd64.zip"


def nothing(message: str) -> None:
    """A notify that drops retry messages."""


class Hosts:
    """A MockTransport for several hosts: each path answers once with what `answers` says; requests kept."""

    def __init__(self, answers: dict[str, httpx.Response]) -> None:
        self.answers = answers
        self.requests: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(str(request.url))
        return self.answers.get(str(request.url), httpx.Response(404))


def download_client(hosts: Hosts) -> httpx.Client:
    return http.make_download_client(transport=httpx.MockTransport(hosts))


@pytest.mark.parametrize("location", [
    "http://plain.test/agent.zip", "HTTP://plain.test/agent.zip", "Http://plain.test/agent.zip",
    "hTTp://plain.test/agent.zip", "  http://plain.test/agent.zip", "\thttp://plain.test/agent.zip",
    " HTTP://plain.test/agent.zip ",
])
def test_an_https_download_redirected_to_plain_http_in_any_spelling_is_refused_unfollowed(location: str) -> None:
    hosts = Hosts({RELEASE: httpx.Response(302, headers={"location": location})})

    with download_client(hosts) as client, pytest.raises(InstallerFailed) as refused:
        http.download(client, RELEASE, cap=1024, deadline=2, notify=nothing, what="download the zip",
                      follow_redirects=True)

    assert "redirected to plain http" in str(refused.value)
    assert "not followed" in str(refused.value)
    assert hosts.requests == [RELEASE]


@pytest.mark.parametrize("location", ["https://storage.test/agent.zip", "HTTPS://storage.test/agent.zip",
                                      "/elsewhere/agent.zip", "//storage.test/agent.zip"])
def test_an_https_download_redirected_to_https_is_followed(location: str) -> None:
    target = str(httpx.URL(RELEASE).join(location.strip()))
    hosts = Hosts({RELEASE: httpx.Response(302, headers={"location": location}),
                   target: httpx.Response(200, content=b"zip bytes")})

    with download_client(hosts) as client:
        body = http.download(client, RELEASE, cap=1024, deadline=2, notify=nothing, what="download the zip",
                             follow_redirects=True)

    assert body == b"zip bytes"
    assert hosts.requests == [RELEASE, target]


def test_a_plain_http_download_may_redirect_to_plain_http() -> None:
    """Only a downgrade is refused: a plain-http source is used only with its SHA-256 pinned anyway."""
    source, target = "http://mirror.test/a.zip", "http://storage.test/a.zip"
    hosts = Hosts({source: httpx.Response(302, headers={"location": target}),
                   target: httpx.Response(200, content=b"zip bytes")})

    with download_client(hosts) as client:
        body = http.download(client, source, cap=1024, deadline=2, notify=nothing, what="download the zip",
                             follow_redirects=True)

    assert body == b"zip bytes"


@pytest.mark.parametrize(("size", "refused"), [(1023, False), (1024, False), (1025, True), (10_000, True)])
def test_a_download_over_its_cap_is_refused_and_one_at_the_cap_is_kept(size: int, refused: bool) -> None:
    hosts = Hosts({RELEASE: httpx.Response(200, content=b"z" * size)})

    with download_client(hosts) as client:
        if refused:
            with pytest.raises(InstallerFailed) as error:
                http.download(client, RELEASE, cap=1024, deadline=2, notify=nothing, what="download the zip")
            assert str(error.value) == (
                "download the zip: https://release.test/v1/nezha-agent_linux_amd64.zip is larger than 1024 bytes; "
                "refusing it")
        else:
            assert http.download(client, RELEASE, cap=1024, deadline=2, notify=nothing,
                                 what="download the zip") == b"z" * size


def test_a_download_into_a_file_over_its_cap_is_refused() -> None:
    hosts = Hosts({RELEASE: httpx.Response(200, content=b"z" * 5000)})

    with download_client(hosts) as client, tempfile.TemporaryFile() as into:
        with pytest.raises(InstallerFailed, match="is larger than 1024 bytes; refusing it"):
            http.download(client, RELEASE, cap=1024, deadline=2, notify=nothing, what="download the zip", into=into)
