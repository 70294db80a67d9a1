"""Prove the platform across real processes: events between app servers, one job runner.

These tests start separate Python processes on one database (and one Redis):

- two app servers: an event published through one reaches a browser's
  Server-Sent Events stream on the other;
- two schedulers: a job that both of them schedule never runs twice at once.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Float, Integer, MetaData, Table, create_engine, select, text
from sqlalchemy.engine import make_url

from his import create_app, events
from his.cli import upgrade_database
from his.db import get_database

ROOT = Path(__file__).resolve().parents[2]
DATABASE_URL = os.environ.get("VETINH_TEST_DATABASE_URL", "")
REDIS_URL = os.environ.get("VETINH_TEST_REDIS_URL", "")

probe_metadata = MetaData()
probe_runs = Table(
    "probe_job_runs",
    probe_metadata,
    Column("id", Integer, primary_key=True),
    Column("pid", Integer, nullable=False),
    Column("started", Float, nullable=False),
    Column("ended", Float, nullable=False),
)


@contextmanager
def postgres_database() -> Iterator[str]:
    """Create a PostgreSQL database of our own on the test server; drop it afterwards."""
    if not DATABASE_URL:
        pytest.skip("VETINH_TEST_DATABASE_URL is not set: this test needs a PostgreSQL server")
    server = make_url(DATABASE_URL).set(drivername="postgresql+psycopg")
    name = f"vetinh_test_{secrets.token_hex(6)}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _process_env(tmp_path: Path, database_url: str, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("VETINH_") or key.startswith("VETINH_TEST_")
    }
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        VETINH_ENV="testing",
        VETINH_SECRET_KEY=secrets.token_urlsafe(32),
        VETINH_DATABASE_URL=database_url,
        VETINH_SCHEDULER_ENABLED="0",
        VETINH_INSTANCE_DIR=str(tmp_path / "instance"),
        VETINH_DATA_DIR=str(tmp_path / "data"),
        **extra,
    )
    return env


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, *args], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )


def _stop(process: subprocess.Popen[bytes], timeout: float = 10) -> int | None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


def _wait_healthy(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, f"server exited early:\n{log.read_text()}"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    pytest.fail(f"server on port {port} never became healthy:\n{log.read_text()}")


def _read_sse_message(response: http.client.HTTPResponse) -> dict[str, str]:
    """Read one message (up to its blank line) from an event stream."""
    fields: dict[str, str] = {}
    while True:
        line = response.readline().decode("utf-8")
        if not line:
            raise EOFError("the event stream ended")
        line = line.rstrip("\n")
        if not line:
            if fields:
                return fields
            continue
        name, _, value = line.partition(":")
        fields[name or "comment"] = value.removeprefix(" ")


def _next_event(response: http.client.HTTPResponse) -> dict[str, str]:
    while True:
        message = _read_sse_message(response)
        if "event" in message:
            return message


@pytest.mark.postgres
@pytest.mark.redis
def test_event_published_on_one_server_reaches_a_browser_on_the_other(
    tmp_path: Path,
) -> None:
    if not REDIS_URL:
        pytest.skip("VETINH_TEST_REDIS_URL is not set: this test needs a Redis server")
    prefix = f"vetinh-test-{secrets.token_hex(4)}:"
    with postgres_database() as database_url:
        upgrade_database(database_url)
        env = _process_env(
            tmp_path,
            database_url,
            VETINH_REDIS_URL=REDIS_URL,
            VETINH_EVENT_BACKEND="redis",
            VETINH_REDIS_PREFIX=prefix,
        )
        ports = [_free_port(), _free_port()]
        logs = [tmp_path / f"server-{port}.log" for port in ports]
        servers = [
            _start(["-m", "his.cli", "run", "--port", str(port)], env, log)
            for port, log in zip(ports, logs, strict=True)
        ]
        browser: http.client.HTTPConnection | None = None
        try:
            for port, server, log in zip(ports, servers, logs, strict=True):
                _wait_healthy(port, server, log)
            board_port, desk_port = ports

            browser = http.client.HTTPConnection("127.0.0.1", board_port, timeout=10)
            browser.request(
                "GET",
                "/api/v1/events/test/stream?topic=queue.called&keepalive=1",
                headers={"Accept": "text/event-stream"},
            )
            stream = browser.getresponse()
            assert stream.status == 200
            assert stream.getheader("Content-Type", "").startswith("text/event-stream")
            assert "retry" in _read_sse_message(stream)  # subscribed on the board server

            desk = http.client.HTTPConnection("127.0.0.1", desk_port, timeout=10)
            body = {"topic": "queue.called", "data": {"number": 17, "room": "Phòng khám 2"}}
            desk.request(
                "POST",
                "/api/v1/events/test",
                body=json.dumps(body),
                headers={"Content-Type": "application/json"},
            )
            published = desk.getresponse()
            assert published.status == 202, published.read()
            desk.close()

            event = _next_event(stream)
            assert event["event"] == "queue.called"
            assert json.loads(event["data"]) == {"number": 17, "room": "Phòng khám 2"}

            # A third process (this one) publishing through his.events reaches it too.
            publisher = create_app(
                database_url=database_url,
                env="testing",
                secret_key=secrets.token_urlsafe(32),
                scheduler_enabled=False,
                redis_url=REDIS_URL,
                event_backend="redis",
                data_dir=str(tmp_path / "data"),
            )
            publisher.config["VETINH_REDIS_PREFIX"] = prefix
            try:
                with publisher.app_context():
                    events.publish("queue.called", {"number": 18})
            finally:
                events.close(publisher)
                publisher.extensions["vetinh.audit"].close()
                get_database(publisher).dispose()
            assert json.loads(_next_event(stream)["data"]) == {"number": 18}
        finally:
            if browser is not None:
                browser.close()
            for server in servers:
                _stop(server)


SCHEDULER_SCRIPT = textwrap.dedent(
    """
    import os, time
    from sqlalchemy import text
    from his import create_app, jobs
    from his.db import get_session

    def probe(app):
        started = time.time()
        time.sleep(float(os.environ["PROBE_SECONDS"]))
        get_session().execute(
            text("INSERT INTO probe_job_runs (pid, started, ended) VALUES (:p, :s, :e)"),
            {"p": os.getpid(), "s": started, "e": time.time()},
        )

    jobs.register_job("test.probe", probe, "interval", seconds=1)
    jobs.run_scheduler(create_app(), lease_seconds=1.0)
    """
)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_two_schedulers_never_run_the_same_job_at_once(tmp_path: Path, backend: str) -> None:
    with _database(backend, tmp_path) as database_url:
        upgrade_database(database_url)
        engine = create_engine(database_url)
        probe_metadata.create_all(engine)
        # Each run takes longer than the interval, and longer than the lease
        # (which the runner must keep renewing), so that a second runner
        # without the lease would overlap it.
        env = _process_env(tmp_path, database_url, PROBE_SECONDS="1.3")
        logs = [tmp_path / f"scheduler-{i}.log" for i in range(2)]
        schedulers = [_start(["-c", SCHEDULER_SCRIPT], env, log) for log in logs]
        try:
            deadline = time.monotonic() + 60
            runs: Sequence[Any] = []
            while time.monotonic() < deadline and len(runs) < 3:
                for process, log in zip(schedulers, logs, strict=True):
                    assert process.poll() is None, f"scheduler exited:\n{log.read_text()}"
                time.sleep(0.3)
                with engine.connect() as conn:
                    runs = conn.execute(select(probe_runs)).all()
        finally:
            codes = [_stop(process) for process in schedulers]
        output = "\n".join(log.read_text() for log in logs)
        assert codes == [0, 0], f"schedulers did not stop cleanly:\n{output}"
        with engine.connect() as conn:
            runs = conn.execute(select(probe_runs).order_by(probe_runs.c.started)).all()
        engine.dispose()

    assert len(runs) >= 3, f"the job ran {len(runs)} times:\n{output}"
    for earlier, later in itertools.pairwise(runs):
        assert later.started >= earlier.ended, f"runs overlapped: {earlier} and {later}\n{output}"


@contextmanager
def _database(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "postgresql":
        with postgres_database() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'scheduler.sqlite3'}"


def test_vetinh_scheduler_command_schedules_the_purge_and_stops_on_sigterm(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'command.sqlite3'}"
    upgrade_database(database_url)
    log = tmp_path / "scheduler.log"
    process = _start(["-m", "his.cli", "scheduler"], _process_env(tmp_path, database_url), log)
    engine = create_engine(database_url)
    try:
        deadline = time.monotonic() + 60
        scheduled: list[str] = []
        while time.monotonic() < deadline and "his.purge_expired_credentials" not in scheduled:
            assert process.poll() is None, f"vetinh scheduler exited:\n{log.read_text()}"
            time.sleep(0.2)
            with engine.connect() as conn:
                scheduled = list(conn.scalars(text("SELECT id FROM scheduler_jobs")))
    finally:
        code = _stop(process)
        engine.dispose()
    assert "his.purge_expired_credentials" in scheduled, log.read_text()
    assert code == 0, f"vetinh scheduler did not stop cleanly:\n{log.read_text()}"
