"""A call recovers after the network between the two browsers goes away and comes back.

How the outage is made: Chromium's offline emulation (Playwright's ``set_offline``, the
DevTools protocol's ``offline`` and ``packetLoss`` conditions) stops HTTP but leaves an
established WebRTC connection running, so it cannot cut a call. Instead the test
suspends (SIGSTOP) the renderer of the browser of the participant who joined first:
its page sends and answers nothing, exactly as if its network had gone; the other
page sees its connection drop. Resuming it (SIGCONT) brings the network back. A
connection that merely waited would then carry on with its old ICE credentials, so
each test asserts the credentials (or the connection) changed: the page's own recovery
did the work. An init script records the pages' RTCPeerConnections so the test can read
their state; it changes nothing the page does.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.browser import MEDIA_ARGS
from tests.conftest import LiveServer
from tests.telehealth.conftest import launch_chromium, link_of
from tests.telehealth.test_browser import REMOTE_FRAMES, _frames, _open_call, vietnamese

pytestmark = pytest.mark.e2e

RECORD_CONNECTIONS = """
(() => {
  const Native = window.RTCPeerConnection;
  const made = [];
  window.__connections = made;
  window.RTCPeerConnection = function (...args) {
    const pc = new Native(...args);
    made.push(pc);
    return pc;
  };
  window.RTCPeerConnection.prototype = Native.prototype;
})();
"""
LIVE_CONNECTIONS = "() => window.__connections.filter((pc) => pc.connectionState !== 'closed').length"
MADE_CONNECTIONS = "() => window.__connections.length"
# The ICE username fragments (own/remote) of the page's live connection.
ICE_CREDENTIALS = """() => {
  const pc = window.__connections.filter((c) => c.connectionState !== 'closed').pop();
  const ufrag = (d) => d && (d.sdp.match(/a=ice-ufrag:(\\S+)/) || [])[1];
  return pc ? [ufrag(pc.localDescription), ufrag(pc.remoteDescription)] : null;
}"""
STATUS_IS = "text => document.getElementById('call-status').textContent === text"


def _renderers(marker: str) -> list[int]:
    """Return the renderer processes of the browser started with ``marker`` on its command line."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as stat:
                parents[int(name)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as cmdline:
                commands[int(name)] = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
    family = {pid for pid, command in commands.items() if marker in command and "--type=" not in command}
    frontier = set(family)
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - family
        family |= frontier
    return sorted(pid for pid in family if "--type=renderer" in commands.get(pid, ""))


@contextmanager
def _network_down(marker: str) -> Iterator[None]:
    """Suspend the browser's renderers (its page goes silent) until the block ends."""
    pids = _renderers(marker)
    assert pids, "the browser's renderer processes were not found"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


@pytest.fixture
def two_browsers(media_browser: Any, playwright: Any) -> Iterator[tuple[Any, Any, str]]:
    """Give the first participant a browser of their own (to cut), the second a context."""
    marker = f"--vetinh-test-browser={uuid.uuid4().hex}"
    first_browser = launch_chromium(playwright, *MEDIA_ARGS, marker)
    first = first_browser.new_context()
    second = media_browser.new_context()
    for context in (first, second):
        context.add_init_script(RECORD_CONNECTIONS)
    yield first, second, marker
    second.close()
    first_browser.close()


def _in_a_call(
    server: LiveServer, room: dict[str, Any], first_context: Any, second_context: Any
) -> tuple[Any, Any]:
    """Join the host, then the specialist (who, joining last, offers the connection)."""
    host = _open_call(first_context, f"{server.url}/telehealth/call#{link_of(room, 'host')}")
    specialist = _open_call(second_context, f"{server.url}/telehealth/call#{link_of(room, 'specialist')}")
    host.get_by_test_id("join-button").click()
    host.wait_for_function("() => !document.getElementById('controls').hidden", timeout=5_000)
    specialist.get_by_test_id("join-button").click()
    for page in (host, specialist):
        page.wait_for_function(REMOTE_FRAMES, timeout=10_000)
    return host, specialist


def _advancing(page: Any) -> bool:
    """Tell whether the remote video plays on: five more frames within ten seconds."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    before = _frames(page)
    if before is None:
        return False
    try:
        page.wait_for_function(f"before => ({REMOTE_FRAMES})() >= before + 5", arg=before, timeout=10_000)
    except PlaywrightTimeout:
        return False
    return True


def test_an_ice_restart_brings_the_video_back_after_a_short_outage(
    live_server: LiveServer, consult_room: dict[str, Any], two_browsers: tuple[Any, Any, str]
) -> None:
    first_context, second_context, marker = two_browsers
    host, specialist = _in_a_call(live_server, consult_room, first_context, second_context)
    own_before, remote_before = specialist.evaluate(ICE_CREDENTIALS)
    reconnecting = vietnamese(live_server, "Connection lost; reconnecting…")
    in_call = vietnamese(live_server, "You are in the call.")

    with _network_down(marker):
        specialist.wait_for_function(STATUS_IS, arg=reconnecting, timeout=15_000)
        frozen = _frames(specialist)
        # The page restarts ICE: its offer carries new credentials (the peer cannot answer yet).
        specialist.wait_for_function(
            "before => { const pc = window.__connections[0];"
            " return (pc.localDescription.sdp.match(/a=ice-ufrag:(\\S+)/) || [])[1] !== before; }",
            arg=own_before,
            timeout=10_000,
        )
        still_frozen = _frames(specialist)

    specialist.wait_for_function(STATUS_IS, arg=in_call, timeout=15_000)
    for page in (host, specialist):
        page.wait_for_function(REMOTE_FRAMES, timeout=10_000)
    # The peer's answer to the restart arrives once its page runs again.
    specialist.wait_for_function("() => window.__connections[0].signalingState === 'stable'", timeout=10_000)
    own_after, remote_after = specialist.evaluate(ICE_CREDENTIALS)
    host_own, host_remote = host.evaluate(ICE_CREDENTIALS)

    assert still_frozen == frozen  # no video arrived while the network was down
    assert _advancing(specialist)
    assert _advancing(host)
    # The same connection, restarted: both sides now use new ICE credentials.
    assert specialist.evaluate(MADE_CONNECTIONS) == 1
    assert own_after != own_before
    assert remote_after != remote_before
    assert (host_own, host_remote) == (remote_after, own_after)
    assert host.get_by_test_id("call-status").inner_text() == in_call


def test_a_new_connection_replaces_one_that_ice_restarts_could_not_save(
    live_server: LiveServer, consult_room: dict[str, Any], two_browsers: tuple[Any, Any, str]
) -> None:
    first_context, second_context, marker = two_browsers
    host, specialist = _in_a_call(live_server, consult_room, first_context, second_context)
    reconnecting = vietnamese(live_server, "Connection lost; reconnecting…")
    in_call = vietnamese(live_server, "You are in the call.")
    _own_before, remote_before = specialist.evaluate(ICE_CREDENTIALS)

    with _network_down(marker):
        specialist.wait_for_function(STATUS_IS, arg=reconnecting, timeout=15_000)
        # Two ICE restarts go unanswered; then the page builds a brand-new connection.
        specialist.wait_for_function(f"() => ({MADE_CONNECTIONS})() >= 2", timeout=30_000)
        status_while_down = specialist.get_by_test_id("call-status").inner_text()

    specialist.wait_for_function(STATUS_IS, arg=in_call, timeout=15_000)
    for page in (host, specialist):
        page.wait_for_function(REMOTE_FRAMES, timeout=10_000)
    _own_after, remote_after = specialist.evaluate(ICE_CREDENTIALS)

    assert status_while_down == reconnecting
    assert _advancing(specialist)
    assert _advancing(host)
    assert specialist.evaluate(LIVE_CONNECTIONS) == 1
    assert host.evaluate(LIVE_CONNECTIONS) == 1
    assert remote_after != remote_before
    assert specialist.locator("#remote-videos video").count() == 1
    assert host.get_by_test_id("call-status").inner_text() == in_call
