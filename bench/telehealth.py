"""Measure video calls: join-to-first-remote-frame, server CPU during a call, recording cost.

Usage::

    python bench/telehealth.py                       # 10 calls, a 20 s call, 1 and 4 recordings
    python bench/telehealth.py --calls 20 --call-seconds 30 --recordings 8

The server runs under gunicorn (one worker, so its embedded media service is the one
that records) on loopback with a temporary SQLite database. Prints:

- join-to-first-remote-frame for two headless Chromium pages with fake devices: the
  time from the second page's "Join" click until both pages play the other's video
  (p50 and p90 over ``--calls`` calls; target p50 < 1.0 s);
- the server's CPU during a 1:1 call between two pages (signalling only, since media
  goes browser to browser), against the same time idle;
- recording cost: the server's CPU while aiortc senders (640×480, 30 fps, plus a tone)
  are recorded, per recording as % of a core, and how many one core sustains.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TARGET_JOIN_SECONDS = 1.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
REMOTE_PLAYING = """() => {
  const video = document.querySelector('#remote-videos video');
  return !!video && video.videoWidth > 0 && video.getVideoPlaybackQuality().totalVideoFrames > 0;
}"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare(database_url: str) -> dict[str, Any]:
    """Create the sites, two doctors and a patient; return bearer tokens and ids."""
    from his.accounts import NewUser, create_user, issue_token
    from his.db import Database
    from his.models import Site
    from his.patients import PatientDetails, create_patient

    db = Database(database_url)
    with db.session_scope() as session:
        district = Site(code="DIST", name="Bệnh viện huyện", kind="district", facility_code="01234")
        session.add_all([district, Site(code="CENT", name="Bệnh viện trung ương", kind="central")])
        session.flush()
        patient_id = create_patient(
            session,
            PatientDetails(full_name="Nguyễn Văn An", birth_date=date(1960, 5, 1), sex="male"),
            site_id=district.id,
        )
        password = secrets.token_urlsafe(12)
        host = create_user(session, NewUser("bench.host", password, "Bác sĩ A", "doctor", site_code="DIST"))
        guest = create_user(session, NewUser("bench.guest", password, "Bác sĩ B", "doctor", site_code="DIST"))
        token, _row = issue_token(session, user=host, scope="user/*.*", ttl_seconds=24 * 3600)
        prepared = {"token": token, "guest_id": guest.id, "patient_id": patient_id}
    db.dispose()
    return prepared


@contextmanager
def serve(database_url: str, folder: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run gunicorn (one worker, threads for the event streams) until the block ends."""
    port = _free_port()
    env = {
        **os.environ,
        "VETINH_ENV": "production",
        "VETINH_SECRET_KEY": secrets.token_urlsafe(48),
        "VETINH_DATABASE_URL": database_url,
        "VETINH_DATA_DIR": str(folder / "data"),
        "VETINH_INSTANCE_DIR": str(folder / "instance"),
        "VETINH_SCHEDULER_ENABLED": "0",
        "VETINH_ICE_SERVERS": "",
        "VETINH_EVENT_BACKEND": "memory",
    }
    gunicorn = Path(sys.executable).with_name("gunicorn")
    command = [str(gunicorn), "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "32"]
    command += ["--worker-class", "gthread", "--log-level", "warning", "--timeout", "300", "his:create_app()"]
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=30)


def cpu_seconds(process: subprocess.Popen[bytes]) -> float:
    """Return the CPU time used so far by gunicorn's master and workers."""
    pids = [process.pid]
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def new_room(url: str, prepared: dict[str, Any]) -> tuple[str, str, str]:
    """Create a video visit with a second doctor who joins without the lobby; return room and tokens."""
    headers = {"Authorization": f"Bearer {prepared['token']}"}
    room = requests.post(
        f"{url}/api/v1/telehealth/rooms",
        json={
            "patient_id": prepared["patient_id"],
            "planned_start": datetime.now(UTC).isoformat(),
            "duration_minutes": 60,
        },
        headers=headers,
        timeout=10,
    ).json()
    guest = requests.post(
        f"{url}/api/v1/telehealth/rooms/{room['id']}/participants",
        json={"user_id": prepared["guest_id"], "wait_in_lobby": False},
        headers=headers,
        timeout=10,
    ).json()
    host = next(link["token"] for link in room["links"] if link["role"] == "host")
    return room["id"], host, guest["links"][0]["token"]


def _open(context: Any, url: str, token: str) -> Any:
    page = context.new_page()
    page.goto(f"{url}/telehealth/call#{token}")
    page.wait_for_function("() => document.getElementById('local-video').videoWidth > 0", timeout=15_000)
    return page


def join_to_first_frame(browser: Any, url: str, prepared: dict[str, Any], calls: int) -> list[float]:
    """Time, for each call, the second page's join until both pages play remote video."""
    timings = []
    for _ in range(calls):
        _room, host, guest = new_room(url, prepared)
        context = browser.new_context()
        try:
            first, second = _open(context, url, host), _open(context, url, guest)
            first.get_by_test_id("join-button").click()
            first.wait_for_function("() => !document.getElementById('controls').hidden", timeout=10_000)
            started = time.monotonic()
            second.get_by_test_id("join-button").click()
            second.wait_for_function(REMOTE_PLAYING, timeout=15_000, polling=10)
            first.wait_for_function(REMOTE_PLAYING, timeout=15_000, polling=10)
            timings.append(time.monotonic() - started)
            for page in (first, second):
                page.get_by_test_id("leave-button").click()
        finally:
            context.close()
    return timings


def call_cpu(
    browser: Any, url: str, process: subprocess.Popen[bytes], prepared: dict[str, Any], seconds: float
) -> tuple[float, float]:
    """Return the server's CPU (% of a core) idle, then during a 1:1 call of ``seconds``."""
    before = cpu_seconds(process)
    time.sleep(seconds)
    idle = (cpu_seconds(process) - before) / seconds * 100
    _room, host, guest = new_room(url, prepared)
    context = browser.new_context()
    try:
        first, second = _open(context, url, host), _open(context, url, guest)
        first.get_by_test_id("join-button").click()
        first.wait_for_function("() => !document.getElementById('controls').hidden", timeout=10_000)
        second.get_by_test_id("join-button").click()
        second.wait_for_function(REMOTE_PLAYING, timeout=15_000)
        before = cpu_seconds(process)
        time.sleep(seconds)
        during = (cpu_seconds(process) - before) / seconds * 100
    finally:
        context.close()
    return idle, during


async def _record(
    url: str, prepared: dict[str, Any], count: int, seconds: float, process: subprocess.Popen[bytes]
) -> float:
    """Record ``count`` aiortc senders at once; return the server's CPU (% of a core) meanwhile."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from tests.telehealth.peers import MovingBarsTrack, ToneTrack

    def post(path: str, token: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(
            f"{url}/api/v1/telehealth/call/{path}", json=body, headers={"X-Call-Token": token}, timeout=30
        )

    peers = []
    for index in range(count):
        _room, host, _guest = new_room(url, prepared)
        await asyncio.to_thread(post, "join", host, {})
        await asyncio.to_thread(post, "consent", host, {"given": True})
        started = await asyncio.to_thread(post, "recording", host, {"action": "start"})
        started.raise_for_status()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        tracks = [MovingBarsTrack(hue=index * 40, width=640, height=480), ToneTrack()]
        for track in tracks:
            pc.addTransceiver(track, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        answer = await asyncio.to_thread(post, "recording/offer", host, {"sdp": pc.localDescription.sdp})
        answer.raise_for_status()
        await pc.setRemoteDescription(RTCSessionDescription(**answer.json()))
        peers.append((pc, tracks, host))
    await asyncio.sleep(3)  # connected and past the encoders' start
    before = cpu_seconds(process)
    await asyncio.sleep(seconds)
    used = (cpu_seconds(process) - before) / seconds * 100
    for pc, tracks, host in peers:
        await asyncio.to_thread(post, "recording", host, {"action": "stop"})
        await pc.close()
        for track in tracks:
            track.stop()
    return used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10, help="calls timed for join-to-first-frame")
    parser.add_argument("--call-seconds", type=float, default=20.0, help="length of the CPU measurements")
    parser.add_argument("--recordings", type=int, default=4, help="concurrent recordings measured")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aioice").setLevel(logging.WARNING)

    from playwright.sync_api import sync_playwright

    from his.cli import upgrade_database
    from tests.browser import CHROMIUM, CHROMIUM_ARGS, MEDIA_ARGS

    with tempfile.TemporaryDirectory(prefix="vetinh-bench-") as tmp:
        folder = Path(tmp)
        database_url = f"sqlite:///{folder / 'bench.sqlite3'}"
        upgrade_database(database_url)
        prepared = prepare(database_url)
        with serve(database_url, folder) as (url, process), sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS + MEDIA_ARGS
            )
            try:
                timings = join_to_first_frame(browser, url, prepared, args.calls)
                idle, during = call_cpu(browser, url, process, prepared, args.call_seconds)
            finally:
                browser.close()
            # Playwright's sync API leaves its own loop in this thread: aiortc gets a thread of its own.
            with ThreadPoolExecutor(1) as pool:
                one = pool.submit(asyncio.run, _record(url, prepared, 1, args.call_seconds, process)).result()
                many = pool.submit(
                    asyncio.run, _record(url, prepared, args.recordings, args.call_seconds, process)
                ).result()

    p50 = statistics.median(timings)
    p90 = sorted(timings)[max(0, round(0.9 * len(timings)) - 1)]
    per_recording = max((many - idle) / args.recordings, 0.01)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(
        f"join → first remote frame, two Chromium pages, {len(timings)} calls: "
        f"p50 {p50:.3f} s, p90 {p90:.3f} s, max {max(timings):.3f} s "
        f"(target p50 < {TARGET_JOIN_SECONDS:.1f} s: {'met' if p50 < TARGET_JOIN_SECONDS else 'MISSED'})"
    )
    print(f"server CPU, idle: {idle:.1f}% of a core; during a 1:1 call (signalling only): {during:.1f}%")
    print(
        f"recording: 1 call {one - idle:.1f}% of a core; {args.recordings} at once {many - idle:.1f}% "
        f"→ {per_recording:.1f}% per recording, about {int(100 // per_recording)} recordings per core"
    )


if __name__ == "__main__":
    main()
