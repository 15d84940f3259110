"""The fake v1/v2 dashboard applies the enrollment rules of dashboard-v1-v2.md at its agent-connect hook."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator

import httpx
import pytest

from nezha_bootstrap.testing.fake_v0 import Running
from nezha_bootstrap.testing.fake_v1 import FakeV1, serve_v1

UUID = "8d3b2c6e-0f41-5a6b-9c7d-1e2f3a4b5c6d"


@pytest.fixture
def fake() -> FakeV1:
    return FakeV1(profile="v2.1+")


@pytest.fixture
def running(fake: FakeV1) -> Iterator[Running]:
    with serve_v1(fake) as served:
        yield served


@pytest.fixture
def http(running: Running) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.url, trust_env=False) as client:
        yield client


def connect(http: httpx.Client, uuid: str, secret: str) -> httpx.Response:
    return http.post("/_fake/agent-connect", json={"uuid": uuid, "secret": secret})


def test_an_unknown_uuid_becomes_a_new_server_with_a_two_word_name(fake: FakeV1, http: httpx.Client) -> None:
    answer = connect(http, UUID, fake.agent_secret)

    assert (answer.status_code, answer.json()) == (200, {"outcome": "created", "id": 1})
    [server] = fake.servers
    assert server.uuid == UUID and server.owner == 1 and server.hide_for_guest is False
    first, second = server.name.split("-")
    assert first.isalpha() and second.isalpha()


def test_a_known_uuid_is_the_same_row_unchanged(fake: FakeV1, http: httpx.Client) -> None:
    connect(http, UUID, fake.agent_secret)
    [before] = [(s.id, s.name) for s in fake.servers]

    answer = connect(http, UUID, fake.agent_secret)

    assert answer.json() == {"outcome": "known", "id": 1}
    assert [(s.id, s.name) for s in fake.servers] == [before]


def test_a_deleted_row_is_re_created_with_a_new_id(fake: FakeV1, http: httpx.Client) -> None:
    connect(http, UUID, fake.agent_secret)
    fake.delete_server(1)

    assert connect(http, UUID, fake.agent_secret).json() == {"outcome": "created", "id": 2}


def test_upper_case_is_another_server(fake: FakeV1, http: httpx.Client) -> None:
    connect(http, UUID, fake.agent_secret)
    connect(http, UUID.upper(), fake.agent_secret)
    assert [s.uuid for s in fake.servers] == [UUID, UUID.upper()]


@pytest.mark.parametrize(("profile", "refused"), [("v2.0", True), ("v2.1+", True), ("v1.5-1.14", False)])
def test_a_uuid_owned_by_another_user_is_refused_from_v2_0_10(profile: str, refused: bool) -> None:
    fake = FakeV1(profile=profile)
    other = fake.add_user()
    with serve_v1(fake) as running, httpx.Client(base_url=running.url, trust_env=False) as http:
        connect(http, UUID, fake.agent_secret)
        answer = connect(http, UUID, other)
    if refused:
        assert (answer.status_code, answer.json()) == (403, {"error": "does not belong to the agent secret owner"})
    else:
        assert answer.json() == {"outcome": "known", "id": 1}
    assert len(fake.servers) == 1 and fake.failed_credentials == 0


@pytest.mark.parametrize(("uuid", "secret_ok", "error"), [
    (UUID, False, "wrong agent secret"),
    ("8d3b2c6e0f415a6b9c7d1e2f3a4b5c6d", True, "malformed uuid"),
])
def test_wrong_secret_and_malformed_uuid_are_refused_and_counted(fake: FakeV1, http: httpx.Client, uuid: str,
                                                                 secret_ok: bool, error: str) -> None:
    answer = connect(http, uuid, fake.agent_secret if secret_ok else "W" * 32)

    assert (answer.status_code, answer.json()) == (403, {"error": error})
    assert fake.servers == [] and fake.failed_credentials == 1


def test_the_release_host_serves_zips_that_match_their_checksums(fake: FakeV1, http: httpx.Client) -> None:
    fake.add_release("2.3.3", arches=("amd64", "arm64"))

    checksums = http.get("/releases/v2.3.3/checksums.txt").text.splitlines()
    zipped = http.get("/releases/v2.3.3/nezha-agent_linux_arm64.zip").content

    assert [line.split()[1] for line in checksums] == ["nezha-agent_linux_amd64.zip", "nezha-agent_linux_arm64.zip"]
    # sha256sum's format, as the real releases' checksums.txt: two spaces
    assert checksums[1] == f"{hashlib.sha256(zipped).hexdigest()}  nezha-agent_linux_arm64.zip"
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        assert archive.namelist() == ["nezha-agent"]
        assert b"nezha-agent version 2.3.3" in archive.read("nezha-agent")
    assert http.get("/releases/v2.3.3/nezha-agent_linux_mips.zip").status_code == 404


def test_an_unknown_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        FakeV1(profile="v3")
