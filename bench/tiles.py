"""Measure Deep Zoom tile serving: throughput and p50/p99 latency, ours against a naive baseline.

Usage::

    python bench/tiles.py                              # 2,000 requests per client count
    python bench/tiles.py --memory-requests 100000     # then 100,000 more, watching our memory
    python bench/tiles.py --database postgresql://postgres@127.0.0.1:5432/postgres
    python bench/tiles.py --workers 1 --threads 8      # another server shape, for both servers

Both servers run the way production runs the app (README): gunicorn with gthread workers
(by default 2 workers x 4 threads, for a 2-core machine), each on loopback, started with
exactly the same command line apart from the app it loads, and both get the same
viewer-like random walk (pan to a neighbour, zoom in or out, fetch the 3×3 tiles around the
centre) with 1 and 4 concurrent clients. Each client is a process of its own holding one
keep-alive connection (http.client) and sending one request at a time, so a latency is the
server's answer time and not the client's wait for a GIL it shares with other clients.

Ours is the real application (production settings, bearer token, SQLite or PostgreSQL,
access checked on every tile). The baseline is built the way OpenSlide's Deep Zoom example
works: one DeepZoomGenerator per slide, every tile rendered on request, no cache, no auth.

Prints throughput and p50/p99 latency over all tiles, then separately for the tiles our
server sent as stored in the file or from its cache and for those it had to render (its
X-Tile-Source header says which; every baseline tile is rendered), the throughput ratio,
and the server's and the clients' CPU time per request: unlike latency, CPU per request
barely moves when other work shares the machine (the load average is printed too).
Memory: each gunicorn worker is a process with its own tile cache, so the limit (tile
cache size + 200 MB) applies to every worker's resident memory; the run prints each
worker's, the master's and their sum, after the timed runs and, with --memory-requests,
the peak while the memory run lasts (sampled every 0.2 s).
"""

from __future__ import annotations

import argparse
import http.client
import io
import multiprocessing
import os
import random
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
WSI = ROOT / "tests" / "data" / "wsi"
SLIDES = ("CMU-1-Small-Region.svs", "bone-marrow-jpeg.dcm")
HOST = "127.0.0.1"
TARGET_RATIO = 3.0
TARGET_P99_MS = 20.0
TILE_CACHE_BYTES = 64 * 1024 * 1024
MEMORY_HEADROOM_MB = 200
FAST_SOURCES = ("native", "cache")
# Set by serve() for the workers: each app factory leaves a file here once its worker has loaded it.
READY_DIR_VARIABLE = "BENCH_TILES_READY_DIR"


@dataclass(frozen=True)
class Layout:
    """The tile grid of one slide on one server: the URL path of its tiles and tiles per level."""

    path: str
    level_tiles: list[tuple[int, int]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _announce_ready() -> None:
    """Tell serve() that this worker has loaded its app (a file named after the process)."""
    folder = os.environ.get(READY_DIR_VARIABLE)
    if folder:
        Path(folder, str(os.getpid())).touch()


def baseline_app() -> Flask:
    """Build the naive server: a generator per slide, every tile rendered on request (gunicorn calls this)."""
    import openslide
    from flask import Flask, Response, abort
    from openslide.deepzoom import DeepZoomGenerator

    app = Flask("baseline")
    generators = {name: DeepZoomGenerator(openslide.OpenSlide(str(WSI / name)), 254, 1) for name in SLIDES}

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    @app.get("/<name>.dzi")
    def dzi(name: str) -> Response:
        if name not in generators:
            abort(404)
        return Response(generators[name].get_dzi("jpeg"), mimetype="application/xml")

    @app.get("/<name>_files/<int:level>/<int:col>_<int:row>.jpeg")
    def tile(name: str, level: int, col: int, row: int) -> Response:
        if name not in generators:
            abort(404)
        image = generators[name].get_tile(level, (col, row))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        return Response(buffer.getvalue(), mimetype="image/jpeg")

    _announce_ready()
    return app


def our_app() -> Flask:
    """Build the real application from the ``VETINH_*`` environment with the bench's tile cache (gunicorn calls this)."""
    from his import create_app

    app = create_app(extra={"pathology_tile_cache_bytes": TILE_CACHE_BYTES})
    _announce_ready()
    return app


@dataclass
class Server:
    """A running gunicorn: its address and its master process."""

    port: int
    process: subprocess.Popen[bytes]

    def workers(self) -> list[int]:
        """Return the worker processes' ids (the master's children)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except FileNotFoundError:
            return []

    def pids(self) -> list[int]:
        """Return the master's and its workers' process ids."""
        return [self.process.pid, *self.workers()]

    def cpu_seconds(self) -> float:
        """Return the CPU time (user + system) the master and its workers have used so far."""
        return sum(cpu_seconds(pid) for pid in self.pids())

    def rss(self) -> dict[int, float]:
        """Return the resident memory (MB) of the master and of each worker."""
        return {pid: rss_mb(pid) for pid in self.pids()}


@contextmanager
def serve(app: str, workers: int, threads: int, env: dict[str, str]) -> Iterator[Server]:
    """Run gunicorn with gthread workers on a loopback port, serving ``app``, until the block ends.

    Ours and the baseline are both started here with the same command line but for the
    app (``tiles:our_app()`` or ``tiles:baseline_app()``), so they get the same server.
    Returns once every worker has loaded the app and the server answers /healthz.
    Raises RuntimeError when it does not within a minute.
    """
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="vetinh-bench-ready-") as ready:
        command = [
            str(Path(sys.executable).with_name("gunicorn")),
            "--bind",
            f"{HOST}:{port}",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--worker-class",
            "gthread",
            "--reuse-port",  # a socket per worker: the kernel spreads the clients over them
            "--log-level",
            "warning",
            "--timeout",
            "300",
            "--pythonpath",
            str(BENCH),
            app,
        ]
        process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env, READY_DIR_VARIABLE: ready})
        server = Server(port=port, process=process)
        try:
            deadline = time.monotonic() + 60
            while len(os.listdir(ready)) < workers or not _answers(port, "/healthz"):
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"gunicorn serving {app} did not start")
                time.sleep(0.1)
            yield server
        finally:
            process.terminate()
            process.wait(timeout=30)


def fetch(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET a path from the server on a connection of its own; return the status and the body.

    Raises OSError (or an http.client error) when the server does not answer.
    """
    connection = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _answers(port: int, path: str) -> bool:
    try:
        return fetch(port, path)[0] == 200
    except (http.client.HTTPException, OSError):
        return False


def prepare_ours(folder: Path, database_url: str) -> tuple[str, str, dict[str, str]]:
    """On a migrated database, create a district doctor with a token and upload the slides."""
    from werkzeug.datastructures import FileStorage
    from werkzeug.test import encode_multipart

    from his import create_app
    from his.accounts import NewUser, create_user, issue_token
    from his.db import get_database
    from his.models import Site, User

    data_dir = str(folder / "data")
    app = create_app(
        database_url=database_url,
        data_dir=data_dir,
        secret_key=secrets.token_urlsafe(32),
        env="testing",
        scheduler_enabled=False,
    )
    with get_database(app).session_scope() as session:
        session.add(Site(code="DIST", name="District", kind="district", facility_code="01234"))
    with get_database(app).session_scope() as session:
        user = create_user(
            session,
            NewUser(
                username="bench",
                password=secrets.token_urlsafe(16),
                full_name="Bench",
                role="doctor",
                site_code="DIST",
            ),
        )
        token, _row = issue_token(
            session, user=session.get(User, user.id), scope="user/*.*", ttl_seconds=86400
        )
    client = app.test_client()
    ids: dict[str, str] = {}
    for name in SLIDES:
        boundary, body = encode_multipart(
            {"file": FileStorage(io.BytesIO((WSI / name).read_bytes()), filename=name)}
        )
        response = client.post(
            "/api/v1/slides",
            data=body,
            headers={"Authorization": f"Bearer {token}"},
            content_type=f"multipart/form-data; boundary={boundary}",
        )
        if response.status_code != 201:
            raise RuntimeError(f"uploading {name} failed: {response.status_code} {response.get_json()}")
        ids[name] = response.get_json()["id"]
    app.extensions["vetinh.audit"].close()
    return data_dir, token, ids


def layout(port: int, path: str, headers: dict[str, str]) -> Layout:
    """Read a slide's grid from its descriptor."""
    status, body = fetch(port, f"{path}.dzi", headers)
    if status != 200:
        raise RuntimeError(f"reading the descriptor of {path} failed: {status}")
    text = body.decode()

    def attribute(name: str) -> int:
        found = re.search(rf'{name}="(\d+)"', text)
        if found is None:
            raise RuntimeError(f"no {name} in the descriptor of {path}")
        return int(found.group(1))

    size, width, height = attribute("TileSize"), attribute("Width"), attribute("Height")
    levels: list[tuple[int, int]] = []
    w, h = width, height
    while True:
        levels.append(((w + size - 1) // size, (h + size - 1) // size))
        if w == 1 and h == 1:
            break
        w, h = max(1, (w + 1) // 2), max(1, (h + 1) // 2)
    levels.reverse()
    return Layout(path=path, level_tiles=levels)


def walk(layouts: list[Layout], count: int, seed: int) -> list[str]:
    """Return a viewer-like sequence of tile paths: pan, zoom, and the 3×3 tiles around the centre."""
    rng = random.Random(seed)
    paths: list[str] = []
    current = rng.choice(layouts)
    level = len(current.level_tiles) - 3
    col = row = 0
    while len(paths) < count:
        step = rng.random()
        if step < 0.05:
            current = rng.choice(layouts)
            level = len(current.level_tiles) - 3
        elif step < 0.2 and level < len(current.level_tiles) - 1:
            level, col, row = level + 1, col * 2, row * 2
        elif step < 0.35 and level > 8:
            level, col, row = level - 1, col // 2, row // 2
        else:
            col += rng.choice((-1, 0, 1))
            row += rng.choice((-1, 0, 1))
        cols, rows = current.level_tiles[level]
        col, row = min(max(col, 0), cols - 1), min(max(row, 0), rows - 1)
        for dc in (-1, 0, 1):
            for dr in (-1, 0, 1):
                c, r = col + dc, row + dr
                if 0 <= c < cols and 0 <= r < rows:
                    paths.append(f"{current.path}_files/{level}/{c}_{r}.jpeg")
    return paths[:count]


@dataclass
class Run:
    """One run's throughput, each request's latency (ms) with where the tile came from, and CPU used."""

    rate: float
    samples: list[tuple[str, float]]
    client_cpu_ms: float
    server_cpu_ms: float = float("nan")

    def latencies(self, sources: tuple[str, ...] | None = None) -> list[float]:
        return [ms for source, ms in self.samples if sources is None or source in sources]


@dataclass
class ClientResult:
    """What one client process measured: its samples, its failures, when it ran and its CPU time."""

    samples: list[tuple[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    began: float = 0.0
    ended: float = 0.0
    cpu_seconds: float = 0.0


def _client(port: int, paths: list[str], headers: dict[str, str], ready: Any, go: Any, results: Any) -> None:
    """Fetch ``paths`` one after another on one keep-alive connection, like one viewer; report on ``results``.

    Always puts a ClientResult, with what went wrong in its errors, so the bench never waits in vain.
    """
    result = ClientResult()
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        connection.connect()
        ready.set()
        go.wait()
        cpu = time.process_time()
        result.began = time.monotonic()
        for path in paths:
            started = time.perf_counter()
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                response.read()
            except (http.client.HTTPException, OSError) as error:
                result.errors.append(f"{error!r} {path}")
                connection.close()  # the next request opens a new connection
                continue
            elapsed = (time.perf_counter() - started) * 1000
            result.samples.append((response.getheader("X-Tile-Source", "rendered"), elapsed))
            if response.status != 200:
                result.errors.append(f"{response.status} {path}")
        result.ended = time.monotonic()
        result.cpu_seconds = time.process_time() - cpu
    except Exception as error:
        # Reported rather than raised: the bench waits for every client's result.
        result.errors.append(repr(error))
    finally:
        connection.close()
        ready.set()
        results.put(result)


def run(
    port: int, layouts: list[Layout], headers: dict[str, str], clients: int, per_client: int, seed: int = 0
) -> Run:
    """Run ``clients`` concurrent viewers, each a process; return the throughput, latencies and client CPU.

    Raises RuntimeError when a request failed.
    """
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    go = context.Event()
    processes = []
    for number in range(clients):
        ready = context.Event()
        paths = walk(layouts, per_client, seed + number)
        process = context.Process(
            target=_client, args=(port, paths, headers, ready, go, results), daemon=True
        )
        process.start()
        if not ready.wait(30):
            raise RuntimeError("a client process did not start")
        processes.append(process)
    go.set()
    gathered: list[ClientResult] = [results.get(timeout=3600) for _ in processes]
    for process in processes:
        process.join()
    errors = [error for result in gathered for error in result.errors]
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, first: {errors[0]}")
    samples = [sample for result in gathered for sample in result.samples]
    elapsed = max(r.ended for r in gathered) - min(r.began for r in gathered)
    client_cpu_ms = sum(r.cpu_seconds for r in gathered) * 1000
    return Run(len(samples) / elapsed, samples, client_cpu_ms)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def rss_mb(pid: int) -> float:
    """Return a process's resident memory in MB (0 once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """Return the CPU time (user + system) a process has used so far (0 once it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Memory:
    """Resident memory (MB) of a gunicorn's master and of each of its workers."""

    master: float
    workers: list[float]

    @classmethod
    def of(cls, server: Server, figures: dict[int, float] | None = None) -> Memory:
        figures = server.rss() if figures is None else figures
        master = server.process.pid
        return cls(figures.get(master, 0.0), [mb for pid, mb in figures.items() if pid != master])

    def __str__(self) -> str:
        workers = ", ".join(f"{mb:.0f}" for mb in self.workers)
        return (
            f"workers {workers} MB, master {self.master:.0f} MB, sum {self.master + sum(self.workers):.0f} MB"
        )


class RssWatch:
    """Sample the resident memory of a server's processes in the background and keep each one's peak."""

    def __init__(self, server: Server, every: float = 0.2) -> None:
        self.server, self.every = server, every
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _sample(self) -> None:
        for pid, mb in self.server.rss().items():
            self.peaks[pid] = max(self.peaks.get(pid, 0.0), mb)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


@dataclass
class MemoryRun:
    """The memory run: how many requests it sent, each process's peak and what was left at the end."""

    served: int
    peak: Memory
    last: Memory


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="tile requests per run (split between clients)"
    )
    parser.add_argument(
        "--memory-requests",
        type=int,
        default=0,
        help="after the timed runs, send this many more tile requests (4 clients) to our server and "
        "report each worker's peak resident memory against the tile cache size + 200 MB",
    )
    parser.add_argument(
        "--database", help="PostgreSQL server URL for our server (a temporary database); default SQLite"
    )
    parser.add_argument(
        "--only-ours", action="store_true", help="skip the baseline (no ratio), for quick checks"
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (both servers)")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker (both servers)")
    args = parser.parse_args()

    from fhir_ingest import database

    with (
        tempfile.TemporaryDirectory(prefix="vetinh-bench-tiles-") as tmp,
        database(args.database, Path(tmp)) as database_url,
    ):
        data_dir, token, ids = prepare_ours(Path(tmp), database_url)
        ours_env = {
            "VETINH_ENV": "production",
            "VETINH_SECRET_KEY": secrets.token_urlsafe(48),
            "VETINH_DATABASE_URL": database_url,
            "VETINH_DATA_DIR": data_dir,
            "VETINH_INSTANCE_DIR": str(Path(tmp) / "instance"),
            "VETINH_SCHEDULER_ENABLED": "0",
            "VETINH_EVENT_BACKEND": "memory",
        }
        results: dict[str, dict[int, Run]] = {}
        rss: dict[str, Memory] = {}
        memory: MemoryRun | None = None
        load_before = os.getloadavg()[0]
        for kind in ("ours",) if args.only_ours else ("baseline", "ours"):
            app = "tiles:our_app()" if kind == "ours" else "tiles:baseline_app()"
            env = ours_env if kind == "ours" else {}
            with serve(app, args.workers, args.threads, env) as server:
                headers = {"Authorization": f"Bearer {token}"} if kind == "ours" else {}
                names = [ids[n] for n in SLIDES] if kind == "ours" else list(SLIDES)
                prefix = "/slides/" if kind == "ours" else "/"
                layouts = [layout(server.port, f"{prefix}{name}", headers) for name in names]
                results[kind] = {}
                for clients in (1, 4):
                    cpu_before = server.cpu_seconds()
                    result = run(server.port, layouts, headers, clients, args.requests // clients)
                    result.server_cpu_ms = (server.cpu_seconds() - cpu_before) * 1000
                    results[kind][clients] = result
                rss[kind] = Memory.of(server)
                if kind == "ours" and args.memory_requests:
                    with RssWatch(server) as watch:
                        long_run = run(server.port, layouts, headers, 4, args.memory_requests // 4, seed=100)
                    memory = MemoryRun(
                        len(long_run.samples), Memory.of(server, watch.peaks), Memory.of(server)
                    )

    print(
        f"servers: gunicorn, {args.workers} gthread workers x {args.threads} threads, each; "
        "clients: one process each, one keep-alive connection"
    )
    print(f"our database: {'PostgreSQL' if args.database else 'SQLite'}")
    print(
        f"load average (1 min) on {os.cpu_count()} cores: {load_before:.1f} before the runs, "
        f"{os.getloadavg()[0]:.1f} after (other work on the machine shows in the latencies)"
    )
    report(args.requests, results, rss, memory)


def report(
    count: int,
    results: dict[str, dict[int, Run]],
    rss: dict[str, Memory],
    memory: MemoryRun | None,
) -> None:
    """Print the figures of every run and the targets."""
    print(f"tile requests per run: {count}; slides: {', '.join(SLIDES)}")
    print(
        f"{'server':<10}{'clients':>8}{'tiles':>18}{'count':>7}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'server CPU ms/req':>19}{'client CPU ms/req':>19}"
    )
    groups: list[tuple[str, tuple[str, ...] | None]] = [
        ("all", None),
        ("native or cached", FAST_SOURCES),
        ("rendered", ("rendered",)),
    ]
    for kind, runs in results.items():
        for clients, result in runs.items():
            for label, sources in groups:
                latencies = result.latencies(sources)
                whole = sources is None
                rate = f"{result.rate:.0f}" if whole else ""
                server_cpu = f"{result.server_cpu_ms / len(result.samples):.2f}" if whole else ""
                client_cpu = f"{result.client_cpu_ms / len(result.samples):.2f}" if whole else ""
                print(
                    f"{kind:<10}{clients:>8}{label:>18}{len(latencies):>7}{rate:>8}"
                    f"{statistics.median(latencies) if latencies else float('nan'):>9.2f}"
                    f"{percentile(latencies, 0.99):>9.2f}{server_cpu:>19}{client_cpu:>19}"
                )
    ours = results["ours"][4]
    if "baseline" in results:
        ratio = ours.rate / results["baseline"][4].rate
        print(
            f"throughput ratio with 4 clients (ours / baseline): {ratio:.1f}x (target >= {TARGET_RATIO:.0f}x)"
        )
    fast = percentile(ours.latencies(FAST_SOURCES), 0.99)
    rendered = percentile(ours.latencies(("rendered",)), 0.99)
    print(
        f"our p99 with 4 clients: native or cached {fast:.1f} ms (target < {TARGET_P99_MS:.0f} ms), "
        f"rendered on a miss {rendered:.1f} ms, all {percentile(ours.latencies(), 0.99):.1f} ms"
    )
    limit = TILE_CACHE_BYTES / 1024 / 1024 + MEMORY_HEADROOM_MB
    print(
        "resident memory after the timed runs: "
        + "; ".join(f"{kind} {value}" for kind, value in rss.items())
        + f" (our limit per worker, each with its own tile cache: {TILE_CACHE_BYTES // 1024 // 1024} MB"
        f" + {MEMORY_HEADROOM_MB} MB = {limit:.0f} MB)"
    )
    if memory is not None:
        verdict = "every worker within" if max(memory.peak.workers) < limit else "a worker OVER"
        print(
            f"memory run: {memory.served} more tile requests; our peak resident memory {memory.peak}, "
            f"at the end {memory.last}: {verdict} the limit of {limit:.0f} MB"
        )


if __name__ == "__main__":
    main()
