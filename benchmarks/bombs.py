"""6. bombs: peak RSS against compression bombs, junk and oversized release zips, redirect bombs."""

from __future__ import annotations

import hashlib
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import Outcome, Plan, Target, measure, timed_run
from benchmarks.hostile import V0_LIST, V0_SECRET, hostile_node


def run(plan: Plan) -> Outcome:
    """Peak RSS (and seconds) of a run whose probes, register answer or checksums.txt is a `gzip, gzip`
    bomb, of one whose release zip is junk of `bomb_mib` / 16 MiB (up to ZIP_CAP) with a matching
    checksums.txt, and (issue 18) of runs whose release download is redirected by a 302 carrying the
    bomb or an endless chunked body, or whose checksum-valid zip holds a `member_mib` MiB nezha-agent;
    for the redirects, seconds from SIGTERM to exit too."""

    from nezha_bootstrap.agent import AGENT_V0, ZIP_CAP, asset_name
    from tests.hostile import HostileServer, Route, bomb

    payload = bomb(plan.sizes.bomb_mib << 20)
    junk = os.urandom(min(ZIP_CAP - 1, (plan.sizes.bomb_mib << 20) // 16 * 15 // 16))
    asset = asset_name(platform.machine())
    sums = hashlib.sha256(junk).hexdigest().encode() + b"  " + asset.encode() + b"\n"
    member = agent_zip(plan.sizes.member_mib << 20)
    member_sums = hashlib.sha256(member).hexdigest().encode() + b"  " + asset.encode() + b"\n"
    listing, secret = Route("ok", body=V0_LIST), Route("ok", body=V0_SECRET)
    registered = {"/api/v1/server/list": listing, "/api/v1/server/register": secret}
    direct = {"NEZHA_DASHBOARD_GENERATION": "v0", "NEZHA_INSTALL_METHOD": "direct"}
    redirected = {**direct, "NEZHA_BOOTSTRAP_DEADLINE": "10"}  # issue 18 measured them against 10 s
    release = f"/releases/v{AGENT_V0}"
    cases = {  # name: (the answer to other paths, routes, settings, the exit code expected)
        "probes": (Route("bomb", body=payload), {}, {"NEZHA_AGENT_SECRET": "BenchAgentSecret01"}, 3),
        "register_answer": (Route("bomb", body=payload), {"/api/v1/server/list": listing},
                            {"NEZHA_DASHBOARD_GENERATION": "v0"}, 3),
        "checksums_txt": (Route("bomb", body=payload), registered, direct, 5),
        "big_junk_zip": (Route("ok", body=junk), {**registered, f"{release}/checksums.txt": Route("ok", body=sums)},
                         direct, 5),
        "redirect_bomb_checksums_txt": (Route("ok", body=member), {
            **registered, f"{release}/checksums.txt": Route("redirect_bomb", body=payload, location="/storage/sums"),
            "/storage/sums": Route("ok", body=member_sums)}, redirected, 5),
        "redirect_bomb_zip": (Route("ok", body=member), {
            **registered, f"{release}/checksums.txt": Route("ok", body=member_sums),
            f"{release}/{asset}": Route("redirect_bomb", body=payload, location="/storage/zip")}, redirected, 5),
        "redirect_endless_body": (Route("ok", body=member), {
            **registered, f"{release}/checksums.txt": Route("redirect_endless", location=f"{release}/checksums.txt")},
            redirected, 5),
        # Downloaded, checked and extracted (written to disk); then refused (exit 2) as no stub under a root.
        "big_member": (Route("ok", body=member),
                       {**registered, f"{release}/checksums.txt": Route("ok", body=member_sums)}, direct, 2),
    }
    figures: dict[str, Any] = {"wire_bytes": len(payload), "decoded_mib": plan.sizes.bomb_mib,
                               "junk_zip_mib": round(len(junk) / (1 << 20), 1), "member_mib": plan.sizes.member_mib,
                               "member_zip_kib": round(len(member) / 1024, 1)}
    targets, broken = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (default, routes, settings, expected) in cases.items():
            with HostileServer(default, routes=routes) as server:
                argv, env = hostile_node(server.url, Path(tmp) / name, **settings,
                                         NEZHA_AGENT_BASE_URL=f"{server.url}/releases")
                sample = measure(argv, env, rss=True)
                stop = None
                if name.startswith("redirect_"):
                    argv, env = hostile_node(server.url, Path(tmp) / f"{name}-stop", **settings,
                                             NEZHA_AGENT_BASE_URL=f"{server.url}/releases")
                    stop = timed_run(argv, env, stop_after=1.0)
            peak = round(sample.maxrss_kib / 1024, 1)
            figures[name] = {"peak_rss_mib": peak, "exit_code": sample.returncode, "expected_exit": expected,
                             "seconds": round(sample.seconds, 2)}
            targets.append(Target(f"bombs: peak RSS, {name} (exit {sample.returncode})", peak, 64.0, "MiB",
                                  "the run's own peak RSS (a fresh interpreter's wait4); issue 10's cap"))
            if stop is not None:
                figures[name].update(sigterm_to_exit_s=stop[0], sigterm_exit_code=stop[1])
                targets.append(Target(f"bombs: {name} start->exit", round(sample.seconds, 2), 10.0 + 2.0, "s",
                                      "its start; --deadline 10 s plus 2 s (issue 18)"))
                targets.append(Target(f"bombs: {name} SIGTERM->exit (exit {stop[1]})", stop[0], 2.0, "s",
                                      "the SIGTERM sent 1 s into the run; README: a signal ends a run within 2 s"))
            if sample.returncode != expected:
                broken.append(f"bombs: {name} exited with {sample.returncode}, expected {expected}")
    return Outcome(figures, targets, broken)


def agent_zip(size: int) -> bytes:
    """A release zip whose `nezha-agent` is `size` zero bytes, deflated, written a MiB at a time."""
    import io
    import zipfile

    buffer = io.BytesIO()
    info = zipfile.ZipInfo("nezha-agent")
    info.compress_type = zipfile.ZIP_DEFLATED
    block = bytes(1 << 20)
    with zipfile.ZipFile(buffer, "w") as archive, archive.open(info, "w", force_zip64=True) as member:
        for start in range(0, size, len(block)):
            member.write(block[: min(len(block), size - start)])
    return buffer.getvalue()


