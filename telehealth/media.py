"""Run the server's own WebRTC peers (aiortc) in one long-lived asyncio loop.

The server is no media relay: calls go browser to browser. aiortc does only what a
server peer is for: the pre-call test, where the browser sends its camera and
microphone to an echo peer and gets them back, and consented recording, where each
browser sends its media to a receive-only peer that writes it to a file (H.264 and
Opus in Matroska, written by PyAV). The loop lives in a background thread
of the app (the embedded default) or in a ``vetinh media`` process; a request never
runs aiortc itself, it hands the work to the loop and waits for the answer.

In the ``external`` mode the web processes reach the media process through the event
bus: a request (``{"op", "request_id", ...}``) on ``telehealth.media.request`` and the
answer on ``telehealth.media.reply.<request id>``. Recordings are then written to the
data folder both processes share.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import secrets
import threading
import time
from collections.abc import Coroutine
from fractions import Fraction
from pathlib import Path
from typing import Any

from flask import Flask, current_app

from his.errors import N_, BadRequest, TooManyRequests, VetinhError
from his.events import get_bus, make_event

log = logging.getLogger(__name__)

EXTENSION_KEY = "vetinh.telehealth.media"
REQUEST_TOPIC = "telehealth.media.request"
REPLY_TOPIC = "telehealth.media.reply."
ECHO_SECONDS = 60.0
MAX_ECHO_PEERS = 8
ANSWER_TIMEOUT = 15.0


class MediaUnavailable(VetinhError):
    status = 503
    code = "MEDIA_UNAVAILABLE"
    message = N_("The media service does not answer; try again in a moment.")


class TrackRecorder:
    """Write what one browser sends (a video and an audio track) to a Matroska file.

    Video is encoded with H.264 at the size of the first frame (a browser changes its
    resolution as the bandwidth allows; later frames are scaled to that size, since an
    encoder opened for one size refuses another), audio with Opus. Nothing is written
    before the video's size is known, so the file's header always carries it. (aiortc's
    own MediaRecorder, writing MP4 with PyAV 18.1, keeps a browser's audio and silently
    writes no video stream at all; tests/telehealth/test_recording.py checks this one.)
    """

    VIDEO_WAIT_SECONDS = 5.0

    def __init__(self, path: Path, pc: Any) -> None:
        self.path = path
        self.pc = pc
        self.tracks: list[Any] = []
        self.video_frames = 0
        self.audio_frames = 0
        self._container: Any = None
        self._video: Any = None
        self._audio: Any = None
        self._resampler: Any = None
        self._ready = False
        self._held: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._clock = 0.0
        self._last_pts = {"video": -1, "audio": -1}

    def add(self, track: Any) -> None:
        """Take a track the browser sends (called on the peer connection's ``track`` event)."""
        self.tracks.append(track)

    def start(self) -> None:
        """Open the file and start reading the tracks."""
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode="w", format="matroska")
        self._clock = time.monotonic()
        if any(t.kind == "audio" for t in self.tracks):
            self._audio = self._container.add_stream("libopus", rate=48000)
            self._audio.codec_context.layout = "stereo"
            self._audio.codec_context.format = "s16"
            self._audio.codec_context.time_base = Fraction(1, 1000)
            self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=48000)
        if not any(t.kind == "video" for t in self.tracks):
            self._ready = True
        else:
            asyncio.get_running_loop().call_later(self.VIDEO_WAIT_SECONDS, self._give_up_waiting)
        self._tasks = [asyncio.ensure_future(self._read(track)) for track in self.tracks]

    def _give_up_waiting(self) -> None:
        if self._video is None and self._container is not None:
            self._open_video(640, 480)

    def _open_video(self, width: int, height: int) -> None:
        self._video = self._container.add_stream("libx264", rate=30)
        self._video.width = max(2, width // 2 * 2)
        self._video.height = max(2, height // 2 * 2)
        self._video.pix_fmt = "yuv420p"
        self._video.codec_context.time_base = Fraction(1, 1000)
        self._video.options = {"preset": "ultrafast", "tune": "zerolatency"}
        self._ready = True
        held, self._held = self._held, []
        for frame in held:
            self._write_audio(frame)

    def _pts(self, kind: str) -> int:
        # Both tracks on one wall clock (milliseconds), strictly increasing per stream.
        pts = max(int((time.monotonic() - self._clock) * 1000), self._last_pts[kind] + 1)
        self._last_pts[kind] = pts
        return pts

    async def _read(self, track: Any) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if self._container is None:
                return
            if track.kind == "video":
                self._write_video(frame)
            elif self._ready:
                self._write_audio(frame)
            elif len(self._held) < 250:
                self._held.append(frame)

    def _write_video(self, frame: Any) -> None:
        if self._video is None:
            self._open_video(frame.width, frame.height)
        scaled = frame.reformat(width=self._video.width, height=self._video.height, format="yuv420p")
        scaled.pts = self._pts("video")
        scaled.time_base = Fraction(1, 1000)
        for packet in self._video.encode(scaled):
            self._container.mux(packet)
        self.video_frames += 1

    def _write_audio(self, frame: Any) -> None:
        if self._audio is None:
            return
        for converted in self._resampler.resample(frame):
            converted.pts = self._pts("audio")
            converted.time_base = Fraction(1, 1000)
            for packet in self._audio.encode(converted):
                self._container.mux(packet)
        self.audio_frames += 1

    async def stop(self) -> None:
        """Stop reading, flush the encoders and close the file."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()
        if self._container is None:
            return
        if not self._ready:
            self._open_video(640, 480)
        container, self._container = self._container, None
        for stream in (self._video, self._audio):
            if stream is not None:
                for packet in stream.encode(None):
                    container.mux(packet)
        container.close()


class MediaService:
    """Own an asyncio loop in a daemon thread and the aiortc peers living on it."""

    def __init__(self, *, ice_urls: list[str] | None = None, max_echo_peers: int = MAX_ECHO_PEERS) -> None:
        self.ice_urls = list(ice_urls or [])
        self.max_echo_peers = max_echo_peers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._peers: set[Any] = set()
        self._recorders: dict[str, TrackRecorder] = {}

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
        await asyncio.gather(*(r.stop() for r in list(self._recorders.values())), return_exceptions=True)
        self._recorders.clear()
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

    def handle(self, op: str, data: dict[str, Any]) -> dict[str, Any]:
        """Do one media operation named by the web process; return its JSON-able result.

        Raises BadRequest for an unknown operation, and what the operation raises.
        """
        if op == "echo":
            return {"sdp": self.echo(str(data.get("sdp", "")))}
        if op == "record":
            return {
                "sdp": self.record(
                    str(data.get("key", "")), str(data.get("sdp", "")), str(data.get("path", ""))
                )
            }
        if op == "stop":
            return {"recordings": self.stop_recordings(str(data.get("prefix", "")))}
        raise BadRequest(N_("Unknown media operation."), code="MEDIA_UNKNOWN_OP")

    def record(self, key: str, offer_sdp: str, path: str, timeout: float = ANSWER_TIMEOUT) -> str:
        """Answer a browser's offer with a receive-only peer that records its media to ``path``.

        ``key`` names the recording for :meth:`stop_recordings`. Raises BadRequest for an
        offer aiortc cannot use, MediaUnavailable when the loop does not answer in time.
        """
        future = self.submit(self._record(key, offer_sdp, Path(path)))
        try:
            return str(future.result(timeout))
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise MediaUnavailable() from None
        except ValueError as exc:
            raise BadRequest(
                N_("The browser's offer could not be used."),
                code="MEDIA_BAD_OFFER",
                fields={"sdp": str(exc)[:200]},
            ) from None

    async def _record(self, key: str, offer_sdp: str, path: Path) -> str:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        previous = self._recorders.pop(key, None)
        if previous is not None:
            await previous.stop()
        pc = RTCPeerConnection(RTCConfiguration([]))
        recorder = TrackRecorder(path, pc)
        pc.on("track", recorder.add)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            for transceiver in pc.getTransceivers():
                transceiver.direction = "recvonly"
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            await pc.close()
            raise ValueError(str(exc) or type(exc).__name__) from exc
        recorder.start()
        self._recorders[key] = recorder
        return str(pc.localDescription.sdp)

    def stop_recordings(self, prefix: str, timeout: float = ANSWER_TIMEOUT) -> dict[str, dict[str, int]]:
        """Stop the recordings whose key starts with ``prefix`` and finish their files.

        Returns each key's counts of video and audio frames written. Raises
        MediaUnavailable when the loop does not answer in time.
        """
        future = self.submit(self._stop_recordings(prefix))
        try:
            result: dict[str, dict[str, int]] = future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise MediaUnavailable() from None
        return result

    async def _stop_recordings(self, prefix: str) -> dict[str, dict[str, int]]:
        stopped = {}
        for key in [k for k in self._recorders if prefix and k.startswith(prefix)]:
            recorder = self._recorders.pop(key)
            await recorder.stop()
            stopped[key] = {"video_frames": recorder.video_frames, "audio_frames": recorder.audio_frames}
        return stopped

    @property
    def peer_count(self) -> int:
        return len(self._peers)


def media_mode(app: Flask) -> str:
    """Say where the media service runs: ``embedded`` (a thread here) or ``external``.

    Read from ``Settings.telehealth_media`` (``VETINH_TELEHEALTH_MEDIA``).
    """
    return str(app.extensions["vetinh.settings"].telehealth_media or "embedded")


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


def media_request(op: str, data: dict[str, Any]) -> dict[str, Any]:
    """Ask the media service to do ``op`` (echo, record, stop), here or in the media process.

    Raises what :meth:`MediaService.handle` raises; MediaUnavailable when no media
    process answers in the external mode.
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    if media_mode(app) != "external":
        return embedded_service(app).handle(op, data)
    request_id = secrets.token_hex(8)
    bus = get_bus(app)
    with bus.subscribe([REPLY_TOPIC + request_id], ANSWER_TIMEOUT) as replies:
        # Sent at once, not at commit: the media process answers while we wait.
        bus.send(make_event(REQUEST_TOPIC, {**data, "op": op, "request_id": request_id}))
        event = replies.get(ANSWER_TIMEOUT)
    if event is None:
        raise MediaUnavailable()
    if event.data.get("error"):
        error = VetinhError(str(event.data.get("message") or ""), code=str(event.data["error"]))
        error.status = int(event.data.get("status") or 500)
        raise error
    return dict(event.data)


def echo_answer(offer_sdp: str) -> str:
    """Get an echo peer's answer to a browser's offer.

    Raises what :func:`media_request` raises.
    """
    return str(media_request("echo", {"sdp": offer_sdp})["sdp"])


def serve_bus_requests(app: Flask, service: MediaService, stop: threading.Event) -> None:
    """Answer media requests from the bus until ``stop`` is set (the ``vetinh media`` process)."""
    bus = get_bus(app)
    with bus.subscribe([REQUEST_TOPIC], 1.0) as requests:
        while not stop.is_set():
            event = requests.get(1.0)
            if event is None:
                continue
            request_id = str(event.data.get("request_id", ""))
            if not request_id.isalnum():
                continue
            try:
                reply = service.handle(str(event.data.get("op", "")), event.data)
            except VetinhError as exc:
                reply = {"error": exc.code, "message": exc.message, "status": exc.status}
            bus.send(make_event(REPLY_TOPIC + request_id, reply))
