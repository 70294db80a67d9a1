"""Real aiortc peers that join calls through a live server's signalling, as a browser would."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fractions
import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import requests
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AUDIO_PTIME, VIDEO_CLOCK_RATE, VIDEO_PTIME

CALL_API = "/api/v1/telehealth/call/"


class MovingBarsTrack(MediaStreamTrack):
    """A synthetic camera: colour bars (320×240 unless told) moving four columns per frame, 30 fps."""

    kind = "video"

    def __init__(self, hue: int, width: int = 320, height: int = 240) -> None:
        super().__init__()
        self.hue = hue
        self.width = width
        self.height = height
        self._start: float | None = None
        self._count = 0

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.time()
        self._count += 1
        wait = self._start + self._count * VIDEO_PTIME - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        image = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        columns = (np.arange(self.width) + self._count * 4) % self.width
        image[:, :, 0] = (columns * 255 // self.width).astype(np.uint8)
        image[:, :, 1] = self.hue
        image[:, :, 2] = 255 - image[:, :, 0]
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = self._count * int(VIDEO_PTIME * VIDEO_CLOCK_RATE)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        return frame


class ToneTrack(MediaStreamTrack):
    """A synthetic microphone: a 440 Hz tone in 20 ms frames."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None
        self._samples = 0

    async def recv(self) -> av.AudioFrame:
        rate = 48000
        size = int(AUDIO_PTIME * rate)
        if self._start is None:
            self._start = time.time()
        wait = self._start + (self._samples + size) / rate - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (np.arange(size) + self._samples) / rate
        tone = (np.sin(2 * math.pi * 440 * t) * 8000).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, rate)
        self._samples += size
        return frame


class EventStream:
    """Read the call's Server-Sent Events in a thread and hand them to the event loop."""

    def __init__(self, url: str, token: str, loop: asyncio.AbstractEventLoop) -> None:
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.connected = asyncio.Event()
        self.status: int | None = None
        self._loop = loop
        self._response: requests.Response | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._read, args=(url, token), daemon=True)
        self._thread.start()

    def _read(self, url: str, token: str) -> None:
        try:
            with requests.get(url, headers={"X-Call-Token": token}, stream=True, timeout=(5, 30)) as response:
                self._response = response
                self.status = response.status_code
                if response.status_code != 200:
                    self._loop.call_soon_threadsafe(self.connected.set)
                    return
                data: list[str] = []
                buffer = ""
                # chunk_size=None yields each chunk as it arrives; iter_lines would wait for 512 bytes.
                for chunk in response.iter_content(chunk_size=None, decode_unicode=True):
                    if self._closed:
                        return
                    buffer += chunk
                    *lines, buffer = buffer.split("\n")
                    for line in lines:
                        if line.startswith(": connected"):
                            self._loop.call_soon_threadsafe(self.connected.set)
                        elif line.startswith("data:"):
                            data.append(line[5:].strip())
                        elif not line and data:
                            event = json.loads("\n".join(data))
                            data = []
                            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except (requests.RequestException, AttributeError, ValueError):
            return  # closed from the loop's side, or the server went away

    def close(self) -> None:
        self._closed = True
        if self._response is not None:
            with contextlib.suppress(Exception):
                self._response.close()


@dataclass
class CallPeer:
    """One participant's aiortc side of a mesh call, driven by the server's events."""

    base_url: str
    token: str
    hue: int = 80
    frames: dict[int, int] = field(default_factory=dict)
    states: list[str] = field(default_factory=list)
    me: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pcs: dict[int, RTCPeerConnection] = {}
        self.stream: EventStream | None = None
        self.enough = asyncio.Event()
        self.needed = 30
        self.admitted = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.video = MovingBarsTrack(self.hue)
        self.audio = ToneTrack()

    async def _http(self, method: str, path: str, body: Any = None) -> requests.Response:
        def call() -> requests.Response:
            return requests.request(
                method,
                self.base_url + CALL_API + path,
                json=body,
                headers={"X-Call-Token": self.token},
                timeout=10,
            )

        return await asyncio.to_thread(call)

    async def open_stream(self) -> None:
        if self.stream is not None:
            self.stream.close()
        self.stream = EventStream(self.base_url + CALL_API + "events", self.token, asyncio.get_running_loop())
        await asyncio.wait_for(self.stream.connected.wait(), 10)
        self._spawn(self._consume(self.stream))

    async def join(self) -> dict[str, Any]:
        """Open the event stream, then join; offer to everyone already in the call."""
        await self.open_stream()
        response = await self._http("POST", "join")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        self.me = body["participant"]
        self.states.append(body["state"])
        if body["state"] == "in_call":
            for peer in body["peers"]:
                await self._offer(peer["id"])
        return body

    async def signal(self, message: dict[str, Any]) -> requests.Response:
        return await self._http("POST", "signal", message)

    def _new_pc(self, peer_id: int) -> RTCPeerConnection:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pcs[peer_id] = pc
        pc.addTrack(self.audio)
        pc.addTrack(self.video)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video":
                self._spawn(self._count(peer_id, track))

        return pc

    async def _offer(self, peer_id: int) -> None:
        pc = self._new_pc(peer_id)
        await pc.setLocalDescription(await pc.createOffer())
        response = await self.signal({"type": "offer", "to": peer_id, "sdp": pc.localDescription.sdp})
        assert response.status_code == 202, response.text

    async def _consume(self, stream: EventStream) -> None:
        while True:
            event = await stream.events.get()
            if event.get("type") == "signal":
                await self._on_signal(event)
            elif event.get("type") == "lobby" and event.get("decision") == "admit":
                self.admitted.set()

    async def _on_signal(self, event: dict[str, Any]) -> None:
        sender = int(event["from"])
        if event["kind"] == "offer":
            pc = self._new_pc(sender)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=event["sdp"], type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            response = await self.signal({"type": "answer", "to": sender, "sdp": pc.localDescription.sdp})
            assert response.status_code == 202, response.text
        elif event["kind"] == "answer":
            await self.pcs[sender].setRemoteDescription(
                RTCSessionDescription(sdp=event["sdp"], type="answer")
            )

    async def _count(self, peer_id: int, track: MediaStreamTrack) -> None:
        while True:
            try:
                await track.recv()
            except Exception:
                return
            self.frames[peer_id] = self.frames.get(peer_id, 0) + 1
            if self.frames[peer_id] >= self.needed:
                self.enough.set()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(pc.close() for pc in self.pcs.values()), return_exceptions=True)
        self.video.stop()
        self.audio.stop()


class LoopThread:
    """Run aiortc peers on an event loop in a thread, beside a synchronous Playwright test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-aiortc", daemon=True)
        self._thread.start()

    def run(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def run_async(coroutine: Any, timeout: float = 60) -> Any:
    """Run a coroutine to completion on a fresh loop in its own thread.

    The session's Chromium (Playwright's sync API) keeps a loop in the main thread, where
    ``asyncio.run`` would refuse to start.
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result(timeout)
