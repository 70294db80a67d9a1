"""Measure Deep Zoom tile serving: throughput and p50/p99 latency, ours against a naive baseline.

Usage::

    python bench/tiles.py                              # 2,000 requests per client count
    python bench/tiles.py --memory-requests 100000     # then 100,000 more, watching our memory
    python bench/tiles.py --database postgresql://postgres@127.0.0.1:5432/postgres

Both servers run under waitress (8 threads, one process) in their own process on
loopback and get the same viewer-like random walk (pan to a neighbour, zoom in or out,
fetch the 3×3 tiles around the centre) with 1 and 4 concurrent clients. The baseline is
built the way OpenSlide's Deep Zoom example works: one DeepZoomGenerator per slide, every
tile rendered on request, no cache. Prints throughput and p50/p99 latency over all tiles,
then separately for the tiles our server sent as stored in the file or from its cache and
for those it had to render (its X-Tile-Source header says which; every baseline tile is
rendered), the throughput ratio, and the server's resident memory against its tile cache
size plus 200 MB (the peak while the memory run lasts, sampled every 0.2 s). The server's
CPU time per request is printed too: unlike latency it barely moves when other work
shares the machine.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WSI = ROOT / "tests" / "data" / "wsi"
SLIDES = ("CMU-1-Small-Region.svs", "bone-marrow-jpeg.dcm")
TARGET_RATIO = 3.0
TARGET_P99_MS = 20.0
TILE_CACHE_BYTES = 64 * 1024 * 1024
MEMORY_HEADROOM_MB = 200
FAST_SOURCES = ("native", "cache")


@dataclass(frozen=True)
class Layout:
    """The tile grid of one slide on one server: levels and tiles per level."""

    url: str
    level_tiles: list[tuple[int, int]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no server on port {port}")


def serve_baseline(port: int) -> None:
    """Serve the slides the naive way: a generator per slide, every tile rendered on request."""
    import openslide
    from flask import Flask, Response, abort
    from openslide.deepzoom import DeepZoomGenerator
    from waitress import serve

    app = Flask("baseline")
    generators = {name: DeepZoomGenerator(openslide.OpenSlide(str(WSI / name)), 254, 1) for name in SLIDES}

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

    serve(app, host="127.0.0.1", port=port, threads=8, _quiet=True)


def serve_ours(port: int, database_url: str, data_dir: str, secret: str) -> None:
    """Serve the real application on the prepared database and slide store."""
    from waitress import serve

    from his import create_app

    app = create_app(
        database_url=database_url,
        data_dir=data_dir,
        secret_key=secret,
        env="testing",
        scheduler_enabled=False,
        event_backend="memory",
        extra={"pathology_tile_cache_bytes": TILE_CACHE_BYTES},
    )
    serve(app, host="127.0.0.1", port=port, threads=8, _quiet=True)


def prepare_ours(folder: Path, database_url: str) -> tuple[str, str, dict[str, str]]:
    """On a migrated database, create a district doctor with a token and upload the slides."""
    from werkzeug.datastructures import FileStorage
    from werkzeug.test import encode_multipart

    from his import create_app
    from his.accounts import NewUser, create_user, issue_token
    from his.db import get_database
    from his.models import Site, User

    data_dir = str(folder / "data")
    secret = secrets.token_urlsafe(32)
    app = create_app(
        database_url=database_url,
        data_dir=data_dir,
        secret_key=secret,
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


def layout(session: requests.Session, base: str) -> Layout:
    """Read a slide's grid from its descriptor."""
    import re

    text = session.get(base + ".dzi", timeout=30).text
    size = int(re.search(r'TileSize="(\d+)"', text).group(1))  # type: ignore[union-attr]
    overlap = int(re.search(r'Overlap="(\d+)"', text).group(1))  # type: ignore[union-attr]
    width = int(re.search(r'Width="(\d+)"', text).group(1))  # type: ignore[union-attr]
    height = int(re.search(r'Height="(\d+)"', text).group(1))  # type: ignore[union-attr]
    del overlap
    levels: list[tuple[int, int]] = []
    w, h = width, height
    while True:
        levels.append(((w + size - 1) // size, (h + size - 1) // size))
        if w == 1 and h == 1:
            break
        w, h = max(1, (w + 1) // 2), max(1, (h + 1) // 2)
    levels.reverse()
    return Layout(url=base, level_tiles=levels)


def walk(layouts: list[Layout], count: int, seed: int) -> list[str]:
    """Return a viewer-like sequence of tile URLs: pan, zoom, and the 3×3 tiles around the centre."""
    rng = random.Random(seed)
    urls: list[str] = []
    current = rng.choice(layouts)
    level = len(current.level_tiles) - 3
    col = row = 0
    while len(urls) < count:
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
                    urls.append(f"{current.url}_files/{level}/{c}_{r}.jpeg")
    return urls[:count]


@dataclass
class Run:
    """One run's throughput and each request's latency (ms) with where the tile came from."""

    rate: float
    samples: list[tuple[str, float]]
    server_cpu_ms: float = float("nan")

    def latencies(self, sources: tuple[str, ...] | None = None) -> list[float]:
        return [ms for source, ms in self.samples if sources is None or source in sources]


def run(layouts: list[Layout], headers: dict[str, str], clients: int, per_client: int, seed: int = 0) -> Run:
    """Run ``clients`` concurrent viewers; return requests per second and every latency in ms."""
    samples: list[tuple[str, float]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def viewer(seed: int) -> None:
        session = requests.Session()
        session.headers.update(headers)
        mine: list[tuple[str, float]] = []
        for url in walk(layouts, per_client, seed):
            started = time.perf_counter()
            response = session.get(url, timeout=60)
            elapsed = (time.perf_counter() - started) * 1000
            mine.append((response.headers.get("X-Tile-Source", "rendered"), elapsed))
            if response.status_code != 200:
                errors.append(f"{response.status_code} {url}")
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=viewer, args=(seed + n,)) for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, first: {errors[0]}")
    return Run(len(samples) / elapsed, samples)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """Return the CPU time (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssWatch:
    """Sample a process's resident memory in the background and keep the peak."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid, self.every, self.peak = pid, every, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self._stop.wait(self.every)

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(self.pid))


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
        "report its peak resident memory against the tile cache size + 200 MB",
    )
    parser.add_argument(
        "--database", help="PostgreSQL server URL for our server (a temporary database); default SQLite"
    )
    parser.add_argument(
        "--only-ours", action="store_true", help="skip the baseline (no ratio), for quick checks"
    )
    parser.add_argument("--serve", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "baseline":
        serve_baseline(args.port)
        return
    if args.serve == "ours":
        serve_ours(args.port, args.database_url, args.data_dir, os.environ["BENCH_SECRET"])
        return

    from fhir_ingest import database

    with (
        tempfile.TemporaryDirectory(prefix="vetinh-bench-tiles-") as tmp,
        database(args.database, Path(tmp)) as database_url,
    ):
        data_dir, token, ids = prepare_ours(Path(tmp), database_url)
        results: dict[str, dict[int, Run]] = {}
        rss: dict[str, float] = {}
        memory: tuple[int, float, float] | None = None
        for kind in ("ours",) if args.only_ours else ("baseline", "ours"):
            port = _free_port()
            command = [sys.executable, __file__, "--serve", kind, "--port", str(port)]
            env = dict(os.environ, BENCH_SECRET=secrets.token_urlsafe(32))
            if kind == "ours":
                command += ["--database-url", database_url, "--data-dir", data_dir]
            server = subprocess.Popen(command, env=env, cwd=ROOT)
            try:
                _wait_for(port)
                base = f"http://127.0.0.1:{port}"
                headers = {"Authorization": f"Bearer {token}"} if kind == "ours" else {}
                session = requests.Session()
                session.headers.update(headers)
                names = [ids[n] for n in SLIDES] if kind == "ours" else list(SLIDES)
                prefix = "/slides/" if kind == "ours" else "/"
                layouts = [layout(session, f"{base}{prefix}{name}") for name in names]
                results[kind] = {}
                for clients in (1, 4):
                    cpu_before = cpu_seconds(server.pid)
                    result = run(layouts, headers, clients, args.requests // clients)
                    result.server_cpu_ms = (cpu_seconds(server.pid) - cpu_before) * 1000
                    results[kind][clients] = result
                rss[kind] = rss_mb(server.pid)
                if kind == "ours" and args.memory_requests:
                    with RssWatch(server.pid) as watch:
                        long_run = run(layouts, headers, 4, args.memory_requests // 4, seed=100)
                    memory = (len(long_run.samples), watch.peak, rss_mb(server.pid))
            finally:
                server.terminate()
                server.wait(timeout=30)

    print(f"our database: {'PostgreSQL' if args.database else 'SQLite'}")
    report(args.requests, results, rss, memory)


def report(
    count: int,
    results: dict[str, dict[int, Run]],
    rss: dict[str, float],
    memory: tuple[int, float, float] | None,
) -> None:
    """Print the figures of every run and the targets."""
    print(f"tile requests per run: {count}; slides: {', '.join(SLIDES)}")
    print(
        f"{'server':<10}{'clients':>8}{'tiles':>18}{'count':>7}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'server CPU ms/req':>19}"
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
                rate = f"{result.rate:.0f}" if sources is None else ""
                cpu = f"{result.server_cpu_ms / len(result.samples):.2f}" if sources is None else ""
                print(
                    f"{kind:<10}{clients:>8}{label:>18}{len(latencies):>7}{rate:>8}"
                    f"{statistics.median(latencies) if latencies else float('nan'):>9.2f}"
                    f"{percentile(latencies, 0.99):>9.2f}{cpu:>19}"
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
        + ", ".join(f"{kind} {value:.0f} MB" for kind, value in rss.items())
        + f" (our limit: tile cache {TILE_CACHE_BYTES // 1024 // 1024} MB + {MEMORY_HEADROOM_MB} MB = {limit:.0f} MB)"
    )
    if memory is not None:
        served, peak, last = memory
        verdict = "within" if peak < limit else "OVER"
        print(
            f"memory run: {served} more tile requests; our peak resident memory {peak:.0f} MB, "
            f"at the end {last:.0f} MB: {verdict} the limit of {limit:.0f} MB"
        )


if __name__ == "__main__":
    main()
