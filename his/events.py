"""Carry domain events between contexts and processes, and stream them to browsers.

Contexts publish facts (``appointment.booked``, ``queue.called``) with
:func:`publish`; pages receive them through :func:`sse_response`. Two backends,
chosen by ``Settings.events``:

``memory``
    One process: a thread-safe fan-out to the subscribers' bounded queues.
``redis``
    Any number of processes: events go through Redis pub/sub on channels named
    ``<prefix><topic>``. Each process keeps one listening connection and fans the
    events out to its local subscribers, so a thousand open browsers cost one Redis
    connection per process, not a thousand.

Inside a request or a job, :func:`publish` holds the event until the unit of work
(``his.db.get_session()``) commits, and drops it if it rolls back: a browser is never
told about something the database does not show. Outside both (a shell, a plain
app context) the event leaves at once. ``app.test_request_context()`` runs no
after-request handlers, so an event published there is never sent.

Delivery is at most once. A subscriber that falls too far behind loses the oldest
events, and events published while Redis is unreachable are lost (the publisher
only logs it); pages should treat an event as "look again", not as the data.
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Iterable, Iterator
from copy import deepcopy
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Protocol, Self

from flask import Blueprint, Flask, Response, current_app, g, has_app_context, has_request_context, request
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from his.db import get_session
from his.errors import ConfigurationError

log = logging.getLogger(__name__)

EXTENSION_KEY = "vetinh.events"
DEFAULT_REDIS_PREFIX = "vetinh:"
SUBSCRIBER_QUEUE_SIZE = 1000
KEEPALIVE_SECONDS = 15.0
SSE_RETRY_MILLISECONDS = 3000
_PENDING_KEY = "vetinh.pending_events"
_SEQUENCE = itertools.count(1)


@dataclass(frozen=True)
class Event:
    """One published fact: its topic, its JSON data and a unique id."""

    topic: str
    data: dict[str, Any]
    id: str

    def to_json(self) -> str:
        """Serialise the event for the wire."""
        return json.dumps(
            {"topic": self.topic, "id": self.id, "data": self.data},
            ensure_ascii=False,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        """Read an event written by :meth:`to_json`.

        Raises ValueError (or KeyError) when the text is not such an event.
        """
        body = json.loads(text)
        return cls(topic=str(body["topic"]), data=dict(body["data"]), id=str(body["id"]))


def make_event(topic: str, data: dict[str, Any]) -> Event:
    """Check a topic and its data and build an event with a fresh id.

    Raises ValueError for an empty topic or one with wildcard characters, and
    TypeError when ``data`` is not a JSON-serialisable dict.
    """
    if not topic or any(ch in topic for ch in "*?[] \n\r"):
        raise ValueError(f"invalid event topic: {topic!r}")
    if not isinstance(data, dict):
        raise TypeError(f"event data must be a dict, not {type(data).__name__}")
    # A JSON round trip both proves the data serialisable and hands every
    # subscriber its own copy, as Redis would.
    copied = json.loads(json.dumps(data, ensure_ascii=False))
    event_id = f"{time.time_ns() // 1_000_000}-{os.getpid()}-{next(_SEQUENCE)}"
    return Event(topic=topic, data=copied, id=event_id)


def format_sse(event: Event) -> str:
    """Frame one event as a Server-Sent Events message."""
    return f"event: {event.topic}\nid: {event.id}\ndata: {json.dumps(event.data, ensure_ascii=False)}\n\n"


class Subscription:
    """Receive the events of some topics until closed; iterate or call :meth:`get`.

    Topics are exact names (``queue.called``) or glob patterns (``queue.*``).
    Iterating yields events and stops after ``timeout`` seconds without one
    (never, when ``timeout`` is None) or when the subscription is closed.
    """

    def __init__(self, hub: _LocalHub, topics: Iterable[str], timeout: float | None = None) -> None:
        self.topics = tuple(topics)
        if not self.topics:
            raise ValueError("subscribe to at least one topic")
        self.timeout = timeout
        self.dropped = 0
        self._exact = frozenset(t for t in self.topics if not _is_pattern(t))
        self._patterns = tuple(t for t in self.topics if _is_pattern(t))
        self._queue: queue.Queue[Event | None] = queue.Queue(SUBSCRIBER_QUEUE_SIZE)
        self._hub = hub
        self.closed = False

    def matches(self, topic: str) -> bool:
        """Tell whether an event of ``topic`` is for this subscription."""
        return topic in self._exact or any(fnmatch.fnmatchcase(topic, pattern) for pattern in self._patterns)

    def deliver(self, event: Event) -> None:
        """Queue an event without ever blocking the publisher; drop the oldest when full."""
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def get(self, timeout: float | None = None) -> Event | None:
        """Return the next event, or None after ``timeout`` seconds or once closed."""
        if self.closed:
            return None
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        return item

    def close(self) -> None:
        """Stop receiving events and wake up a reader waiting in :meth:`get`."""
        if self.closed:
            return
        self.closed = True
        self._hub.remove(self)
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)

    def __iter__(self) -> Iterator[Event]:
        while True:
            item = self.get(self.timeout)
            if item is None:
                return
            yield item

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _is_pattern(topic: str) -> bool:
    return any(ch in topic for ch in "*?[")


class _LocalHub:
    """Fan events out to this process's subscriptions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: list[Subscription] = []

    def add(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions.append(subscription)

    def remove(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)

    def dispatch(self, event: Event) -> None:
        with self._lock:
            targets = [s for s in self._subscriptions if s.matches(event.topic)]
        for index, subscription in enumerate(targets):
            # Each subscriber gets its own data, so none can change what another sees.
            subscription.deliver(event if index == 0 else replace(event, data=deepcopy(event.data)))

    def __len__(self) -> int:
        with self._lock:
            return len(self._subscriptions)


class EventBus(Protocol):
    """What both backends offer."""

    def send(self, event: Event) -> None: ...

    def subscribe(self, topics: Iterable[str], timeout: float | None = None) -> Subscription: ...

    def close(self) -> None: ...


class MemoryEventBus:
    """Deliver events to subscribers in this process only."""

    def __init__(self) -> None:
        self.hub = _LocalHub()

    def send(self, event: Event) -> None:
        """Hand the event to every matching subscriber."""
        self.hub.dispatch(event)

    def subscribe(self, topics: Iterable[str], timeout: float | None = None) -> Subscription:
        """Open a subscription to ``topics``."""
        subscription = Subscription(self.hub, topics, timeout)
        self.hub.add(subscription)
        return subscription

    def close(self) -> None:
        """Release nothing: the in-process bus holds no outside resources."""


class RedisEventBus:
    """Deliver events to subscribers in every process through Redis pub/sub."""

    LISTEN_READY_SECONDS = 5.0

    def __init__(self, url: str, prefix: str = DEFAULT_REDIS_PREFIX) -> None:
        import redis

        self.url = url
        self.prefix = prefix
        # Named, so an operator's CLIENT LIST shows which deployment listens where.
        self.listener_name = "vetinh-events-" + re.sub(r"[^0-9A-Za-z]+", "-", prefix).strip("-")
        self.hub = _LocalHub()
        # Short timeouts: a publisher in a request must not hang on a sick Redis.
        self._client = redis.Redis.from_url(
            url, socket_connect_timeout=1.0, socket_timeout=1.0, health_check_interval=30
        )
        self._listener: threading.Thread | None = None
        self._listener_lock = threading.Lock()
        self._ready = threading.Event()
        self._first_attempt = threading.Event()
        self._stopping = threading.Event()

    def send(self, event: Event) -> None:
        """Publish the event on its Redis channel; on failure, log and serve local subscribers."""
        import redis

        try:
            self._client.publish(self.prefix + event.topic, event.to_json())
        except (redis.RedisError, OSError):
            log.warning(
                "Redis unavailable; event %s (%s) reached this process only",
                event.id,
                event.topic,
                exc_info=True,
            )
            self.hub.dispatch(event)

    def subscribe(self, topics: Iterable[str], timeout: float | None = None) -> Subscription:
        """Open a subscription; the first one starts this process's Redis listener."""
        subscription = Subscription(self.hub, topics, timeout)
        self.hub.add(subscription)
        self._ensure_listener()
        # Wait (briefly) until Redis confirms our pattern, so an event published
        # right after subscribe() returns is not missed; give up at once when
        # Redis cannot be reached.
        self._first_attempt.wait(self.LISTEN_READY_SECONDS)
        if not self._ready.is_set():
            log.warning("Redis listener not ready; subscription to %s may miss events", topics)
        return subscription

    def close(self) -> None:
        """Stop the listener thread and drop the connections."""
        self._stopping.set()
        listener = self._listener
        if listener is not None:
            listener.join(timeout=3)
        self._client.close()

    def _ensure_listener(self) -> None:
        with self._listener_lock:
            if self._listener is not None and self._listener.is_alive():
                return
            self._stopping.clear()
            self._listener = threading.Thread(target=self._listen, name="vetinh-events-redis", daemon=True)
            self._listener.start()

    def _listen(self) -> None:
        import redis

        pattern = _escape_glob(self.prefix) + "*"
        backoff = 0.2
        while not self._stopping.is_set():
            client = redis.Redis.from_url(
                self.url,
                socket_connect_timeout=2.0,
                health_check_interval=10,
                client_name=self.listener_name,
            )
            pubsub = client.pubsub(ignore_subscribe_messages=False)
            try:
                pubsub.psubscribe(pattern)
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "psubscribe":
                        self._ready.set()
                        self._first_attempt.set()
                        backoff = 0.2
                    elif message["type"] == "pmessage":
                        self._dispatch_raw(message["data"])
            except (redis.RedisError, OSError):
                self._ready.clear()
                self._first_attempt.set()
                log.warning("Redis event listener lost its connection; retrying", exc_info=True)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                pubsub.close()
                client.close()

    def _dispatch_raw(self, raw: bytes | str) -> None:
        try:
            event = Event.from_json(raw)
        except (ValueError, KeyError, TypeError):
            log.warning("Ignoring a malformed event on Redis: %r", raw[:200])
            return
        self.hub.dispatch(event)


def _escape_glob(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class _BusHolder:
    """Build the app's bus on first use, so config set after the factory still counts."""

    def __init__(self, app: Flask) -> None:
        self._app = app
        self._bus: EventBus | None = None
        self._lock = threading.Lock()

    def get(self) -> EventBus:
        if self._bus is None:
            with self._lock:
                if self._bus is None:
                    self._bus = _build_bus(self._app)
        return self._bus

    def close(self) -> None:
        with self._lock:
            if self._bus is not None:
                self._bus.close()
                self._bus = None


def _build_bus(app: Flask) -> EventBus:
    settings = app.extensions.get("vetinh.settings")
    backend = settings.events if settings is not None else "memory"
    if backend == "memory":
        return MemoryEventBus()
    if backend == "redis":
        url = settings.redis_url if settings is not None else ""
        if not url:
            raise ConfigurationError("VETINH_EVENT_BACKEND=redis needs VETINH_REDIS_URL.")
        return RedisEventBus(url, redis_prefix(app))
    raise ConfigurationError(f"Unknown event backend {backend!r}: use 'memory' or 'redis'.")


def redis_prefix(app: Flask) -> str:
    """Return the Redis channel prefix: app config, then ``VETINH_REDIS_PREFIX``, then ``vetinh:``."""
    return str(
        app.config.get("VETINH_REDIS_PREFIX") or os.environ.get("VETINH_REDIS_PREFIX") or DEFAULT_REDIS_PREFIX
    )


def init_app(app: Flask) -> None:
    """Give the app its event bus (built lazily) and, in testing mode, the test routes."""
    app.extensions[EXTENSION_KEY] = _BusHolder(app)
    settings = app.extensions.get("vetinh.settings")
    if settings is not None and settings.testing:
        app.register_blueprint(testing_bp)


def get_bus(app: Flask | None = None) -> EventBus:
    """Return the app's event bus.

    Raises RuntimeError outside an application context when no app is given.
    """
    target = app or current_app
    holder: _BusHolder = target.extensions[EXTENSION_KEY]
    return holder.get()


def close(app: Flask) -> None:
    """Stop the app's bus (listener threads, connections)."""
    holder: _BusHolder | None = app.extensions.get(EXTENSION_KEY)
    if holder is not None:
        holder.close()


def publish(topic: str, data: dict[str, Any]) -> None:
    """Publish a fact on ``topic``; inside a unit of work, only once it commits.

    Never raises because the transport failed (that is logged). Raises ValueError
    for a bad topic, TypeError for data that is not a JSON-serialisable dict, and
    RuntimeError outside an application context.
    """
    event = make_event(topic, data)
    bus = get_bus()
    session = _unit_of_work()
    if session is not None:
        session.info.setdefault(_PENDING_KEY, []).append((bus, event))
        return
    _send(bus, event)


def subscribe(topics: Iterable[str] | str, *, timeout: float | None = None) -> Subscription:
    """Subscribe to topics (exact names or glob patterns such as ``queue.*``).

    Use it as a context manager, and iterate it (iteration ends after ``timeout``
    idle seconds) or call ``get()``.
    """
    if isinstance(topics, str):
        topics = [topics]
    return get_bus().subscribe(topics, timeout)


def sse_response(topics: list[str], *, keepalive: float = KEEPALIVE_SECONDS) -> Response:
    """Return a streaming ``text/event-stream`` response of the events on ``topics``.

    The subscription starts before the response is returned, so nothing published
    after this call is missed. A comment line every ``keepalive`` seconds keeps
    proxies from closing the stream and reveals a client that went away, at which
    point the server closes the generator and the subscription ends.
    """
    subscription = subscribe(topics)

    def stream() -> Iterator[str]:
        try:
            yield f"retry: {SSE_RETRY_MILLISECONDS}\n: connected\n\n"
            while True:
                event = subscription.get(keepalive)
                if event is not None:
                    yield format_sse(event)
                elif subscription.closed:
                    return
                else:
                    yield ": keep-alive\n\n"
        finally:
            subscription.close()

    response = Response(stream(), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    # Tell nginx-style proxies not to buffer the stream.
    response.headers["X-Accel-Buffering"] = "no"
    response.call_on_close(subscription.close)
    return response


def _send(bus: EventBus, event: Event) -> None:
    try:
        bus.send(event)
    except Exception:
        # A broken transport must never fail the caller's request or job.
        log.exception("Could not publish event %s (%s)", event.id, event.topic)


def _unit_of_work() -> Session | None:
    """Return the session whose commit should release events published now, if any."""
    if has_request_context():
        # Even before the view touched the database: the request's session is
        # committed (status < 400) or rolled back when the response is ready.
        return get_session()
    if has_app_context():
        return g.get("_vetinh_session")  # a job's unit of work (see his.jobs)
    return None


@sa_event.listens_for(Session, "after_commit")
def _send_pending_after_commit(session: Session) -> None:
    pending = session.info.pop(_PENDING_KEY, None)
    for bus, event in pending or ():
        _send(bus, event)


@sa_event.listens_for(Session, "after_rollback")
def _drop_pending_after_rollback(session: Session) -> None:
    dropped = session.info.pop(_PENDING_KEY, None)
    if dropped:
        log.debug("Dropped %d event(s) of a rolled-back unit of work", len(dropped))


testing_bp = Blueprint("vetinh_events_testing", __name__)


@testing_bp.post("/api/v1/events/test")
def testing_publish() -> tuple[dict[str, Any], int]:
    """Publish ``{"topic", "data"}`` from the request body (testing mode only)."""
    body = request.get_json(force=True, silent=True) or {}
    topic = body.get("topic")
    data = body.get("data", {})
    if not isinstance(topic, str) or not isinstance(data, dict):
        return {"code": "BAD_REQUEST", "message": "need a topic and a data object"}, 400
    event = make_event(topic, data)
    _send(get_bus(), event)
    return {"id": event.id, "topic": topic}, 202


@testing_bp.get("/api/v1/events/test/stream")
def testing_stream() -> Response:
    """Stream the topics named by ``?topic=`` parameters (testing mode only)."""
    topics = request.args.getlist("topic") or ["*"]
    keepalive = float(request.args.get("keepalive", KEEPALIVE_SECONDS))
    return sse_response(topics, keepalive=keepalive)


__all__ = [
    "Event",
    "EventBus",
    "MemoryEventBus",
    "RedisEventBus",
    "Subscription",
    "format_sse",
    "get_bus",
    "init_app",
    "publish",
    "sse_response",
    "subscribe",
]
