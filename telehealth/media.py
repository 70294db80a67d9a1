"""Run the server's own WebRTC peers (aiortc) in one long-lived asyncio loop.

The server is no media relay: calls go browser to browser. aiortc does only what a
server peer is for, here the pre-call test, where the browser sends its camera and
microphone to an echo peer and gets them back. The loop lives in a background thread
of the app (the embedded default) or in a ``vetinh media`` process; a request never
runs aiortc itself, it hands the work to the loop and waits for the answer.

In the ``external`` mode the web processes reach the media process through the event
bus: a request on ``telehealth.media.echo`` and the answer on
``telehealth.media.reply.<request id>``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import secrets
import threading
from collections.abc import Coroutine
from typing import Any

from flask import Flask, current_app

from his.errors import N_, BadRequest, TooManyRequests, VetinhError
from his.events import get_bus, make_event

log = logging.getLogger(__name__)

EXTENSION_KEY = "vetinh.telehealth.media"
ECHO_REQUEST_TOPIC = "telehealth.media.echo"
REPLY_TOPIC = "telehealth.media.reply."
ECHO_SECONDS = 60.0
MAX_ECHO_PEERS = 8
ANSWER_TIMEOUT = 15.0


class MediaUnavailable(VetinhError):
    status = 503
    code = "MEDIA_UNAVAILABLE"
    message = N_("The media service does not answer; try again in a moment.")


class MediaService:
    """Own an asyncio loop in a daemon thread and the aiortc peers living on it."""

    def __init__(self, *, ice_urls: list[str] | None = None, max_echo_peers: int = MAX_ECHO_PEERS) -> None:
        self.ice_urls = list(ice_urls or [])
        self.max_echo_peers = max_echo_peers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._peers: set[Any] = set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the loop thread (once)."""
        with self._lock:
            if self.running:
                return
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

            self._loop = loop
            self._thread = threading.Thread(target=run, name="vetinh-media", daemon=True)
            self._thread.start()
            ready.wait(5)

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Run a coroutine on the media loop, starting it if needed."""
        self.start()
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def stop(self) -> None:
        """Close every peer and stop the loop."""
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None or not thread.is_alive():
                return
            future = asyncio.run_coroutine_threadsafe(self._close_all(), loop)
            try:
                future.result(5)
            except (concurrent.futures.TimeoutError, RuntimeError):
                log.warning("Media peers did not close in time")
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            self._loop = None
            self._thread = None

    async def _close_all(self) -> None:
        await asyncio.gather(*(pc.close() for pc in list(self._peers)), return_exceptions=True)
        self._peers.clear()

    def echo(self, offer_sdp: str, timeout: float = ANSWER_TIMEOUT) -> str:
        """Answer a browser's offer with a peer that sends its media back; return the answer SDP.

        Raises TooManyRequests when too many tests run at once, BadRequest for an offer
        aiortc cannot use, MediaUnavailable when the loop does not answer in time.
        """
        if len(self._peers) >= self.max_echo_peers:
            raise TooManyRequests(
                N_("Too many device tests are running; try again in a minute."), code="MEDIA_BUSY"
            )
        future = self.submit(self._echo(offer_sdp))
        try:
            result: str = future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise MediaUnavailable() from None
        except ValueError as exc:
            raise BadRequest(
                N_("The browser's offer could not be used."),
                code="MEDIA_BAD_OFFER",
                fields={"sdp": str(exc)[:200]},
            ) from None
        return result

    async def _echo(self, offer_sdp: str) -> str:
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
        from aiortc.contrib.media import MediaRelay

        config = RTCConfiguration(
            [RTCIceServer(urls=url) for url in self.ice_urls if url.startswith("stun:")]
        )
        pc = RTCPeerConnection(config)
        relay = MediaRelay()
        self._peers.add(pc)

        @pc.on("track")
        def on_track(track: Any) -> None:
            # The browser's own track, sent straight back: that is the test.
            pc.addTrack(relay.subscribe(track))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self._drop(pc)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            await self._drop(pc)
            raise ValueError(str(exc) or type(exc).__name__) from exc
        asyncio.get_running_loop().call_later(ECHO_SECONDS, lambda: asyncio.ensure_future(self._drop(pc)))
        return str(pc.localDescription.sdp)

    async def _drop(self, pc: Any) -> None:
        self._peers.discard(pc)
        await pc.close()

    @property
    def peer_count(self) -> int:
        return len(self._peers)


def media_mode(app: Flask) -> str:
    """Say where the media service runs: ``embedded`` (a thread here) or ``external``."""
    return str(app.config.get("TELEHEALTH_MEDIA", "embedded"))


def _ice_urls(app: Flask) -> list[str]:
    settings = app.extensions["vetinh.settings"]
    return [u for u in str(settings.ice_servers or "").replace(",", " ").split() if u]


def embedded_service(app: Flask) -> MediaService:
    """Return this app's media service, created on first use and stopped at exit."""
    service: MediaService | None = app.extensions.get(EXTENSION_KEY)
    if service is None:
        with _CREATE_LOCK:
            service = app.extensions.get(EXTENSION_KEY)
            if service is None:
                service = MediaService(ice_urls=_ice_urls(app))
                app.extensions[EXTENSION_KEY] = service
                import atexit

                atexit.register(service.stop)
    return service


_CREATE_LOCK = threading.Lock()


def echo_answer(offer_sdp: str) -> str:
    """Get an echo peer's answer to an offer, from this process or the media process.

    Raises what :meth:`MediaService.echo` raises; MediaUnavailable when no media process
    answers in the external mode.
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    if media_mode(app) != "external":
        return embedded_service(app).echo(offer_sdp)
    request_id = secrets.token_hex(8)
    bus = get_bus(app)
    with bus.subscribe([REPLY_TOPIC + request_id], ANSWER_TIMEOUT) as replies:
        # Sent at once, not at commit: the media process answers while we wait.
        bus.send(make_event(ECHO_REQUEST_TOPIC, {"request_id": request_id, "sdp": offer_sdp}))
        event = replies.get(ANSWER_TIMEOUT)
    if event is None:
        raise MediaUnavailable()
    if event.data.get("error"):
        raise BadRequest(str(event.data.get("message") or ""), code=str(event.data["error"]))
    return str(event.data["sdp"])


def serve_bus_requests(app: Flask, service: MediaService, stop: threading.Event) -> None:
    """Answer echo requests from the bus until ``stop`` is set (the ``vetinh media`` process)."""
    bus = get_bus(app)
    with bus.subscribe([ECHO_REQUEST_TOPIC], 1.0) as requests:
        while not stop.is_set():
            event = requests.get(1.0)
            if event is None:
                continue
            request_id = str(event.data.get("request_id", ""))
            if not request_id.isalnum():
                continue
            try:
                reply: dict[str, Any] = {"sdp": service.echo(str(event.data.get("sdp", "")))}
            except VetinhError as exc:
                reply = {"error": exc.code, "message": exc.message}
            bus.send(make_event(REPLY_TOPIC + request_id, reply))
