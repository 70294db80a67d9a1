"""Measure Synthea ingest through the FHIR HTTP API: resources per second and peak memory.

Usage::

    python bench/fhir_ingest.py                      # SQLite in a temporary folder
    python bench/fhir_ingest.py --database postgresql://postgres@127.0.0.1:5432/postgres

With a PostgreSQL URL a fresh database is created next to the one named and dropped at
the end. The server runs under gunicorn on loopback; the bundles (the directory
batches first, then the patient transactions, then one ~3 MB transaction made of
several patients) are posted one after another; the patient transactions go out from
``--clients`` concurrent connections, ``--rounds`` times over (each round stores new
resources: the bundles hold ``urn:uuid`` entries, so every post gets fresh server ids).
Prints the figures, the CPU the server and this client used, and the load average,
because on a shared machine the other processes' load shows in the rates.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SYNTHEA = ROOT / "tests" / "data" / "fhir" / "synthea"
TARGET_PER_SECOND = 1500
TARGET_RSS_MB = 400


@dataclass
class Server:
    """A running gunicorn serving the app, with the database it uses and a token."""

    url: str
    process: subprocess.Popen[bytes]
    database_url: str
    token: str

    def pids(self) -> list[int]:
        """Return the master's and its workers' process ids."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        found = [self.process.pid]
        if children.exists():
            found += [int(p) for p in children.read_text().split()]
        return found

    def cpu_seconds(self) -> float:
        """Return the CPU time (user + system) the server's processes have used so far."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += (int(fields[11]) + int(fields[12])) / ticks
        return total

    def peak_rss_mb(self) -> float:
        """Return the largest peak resident set size among the server's processes."""
        peaks = []
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks.append(int(line.split()[1]) / 1024)
            except FileNotFoundError:
                continue
        return max(peaks, default=0.0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def database(url: str | None, folder: Path) -> Iterator[str]:
    """Yield a fresh, migrated database URL (a temporary SQLite file or PostgreSQL database)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from his.cli import upgrade_database

    if not url:
        target = f"sqlite:///{folder / 'bench.sqlite3'}"
        upgrade_database(target)
        yield target
        return
    server = make_url(url).set(drivername="postgresql+psycopg")
    name = f"vetinh_bench_{secrets.token_hex(4)}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    target = server.set(database=name).render_as_string(hide_password=False)
    try:
        upgrade_database(target)
        yield target
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def system_token(database_url: str) -> str:
    """Register a system client and return a bearer token for it."""
    from his.accounts import create_client, issue_token
    from his.db import Database

    db = Database(database_url)
    with db.session_scope() as session:
        client, _secret = create_client(
            session,
            client_id=f"bench-{secrets.token_hex(3)}",
            name="Benchmark",
            scope="system/*.*",
            site_code=None,
        )
        token, _row = issue_token(session, client=client, scope="system/*.*", ttl_seconds=24 * 3600)
    db.dispose()
    return token


@contextmanager
def serve(
    database_url: str,
    folder: Path,
    workers: int = 2,
    threads: int = 4,
    app: str = "his:create_app()",
) -> Iterator[Server]:
    """Run gunicorn on a loopback port until the block ends (the product, or another ``app``)."""
    port = _free_port()
    env = {
        **os.environ,
        "VETINH_ENV": "production",
        "VETINH_SECRET_KEY": secrets.token_urlsafe(48),
        "VETINH_DATABASE_URL": database_url,
        "VETINH_DATA_DIR": str(folder / "data"),
        "VETINH_INSTANCE_DIR": str(folder / "instance"),
        "VETINH_SCHEDULER_ENABLED": "0",
        "VETINH_MAX_REQUEST_BYTES": str(64 * 1024 * 1024),
    }
    gunicorn = Path(sys.executable).with_name("gunicorn")
    process = subprocess.Popen(
        [
            str(gunicorn),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--worker-class",
            "gthread",
            # Each worker listens on its own SO_REUSEPORT socket, so the kernel spreads
            # connections over the workers; on one shared socket, whichever worker wakes
            # first takes most keep-alive connections and the others sit idle.
            "--reuse-port",
            "--log-level",
            "warning",
            "--timeout",
            "300",
            app,
        ],
        cwd=ROOT,
        env=env,
    )
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
        yield Server(url=url, process=process, database_url=database_url, token=system_token(database_url))
    finally:
        process.terminate()
        process.wait(timeout=30)


def bundles() -> tuple[list[Path], list[Path]]:
    """Return the directory batches and the patient transactions, smallest first."""
    directory = sorted(SYNTHEA.glob("0-*.json"))
    patients = sorted(
        (p for p in SYNTHEA.glob("*.json") if not p.name.startswith("0-")), key=lambda p: p.stat().st_size
    )
    return directory, patients


def merged_transaction(paths: list[Path], size: int = 3 * 1024 * 1024) -> str:
    """Join patient transactions into one of about ``size`` bytes (fresh urn:uuids per copy)."""
    entries: list[Any] = []
    length = 0
    copy = 0
    while length < size:
        for path in paths:
            text = path.read_text()
            bundle = json.loads(text.replace("urn:uuid:", f"urn:uuid:c{copy}-") if copy else text)
            entries.extend(bundle["entry"])
            length += len(json.dumps(bundle["entry"]))
            if length >= size:
                break
        copy += 1
    return json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})


def post_bundle(session: requests.Session, server: Server, body: str) -> int:
    """Post one Bundle; return how many entries it had. Raises on any failure."""
    response = session.post(
        f"{server.url}/fhir/R4",
        data=body.encode(),
        headers={
            "Content-Type": "application/fhir+json",
            "Authorization": f"Bearer {server.token}",
            "Prefer": "return=minimal",
        },
        timeout=600,
    )
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code}: {response.text[:500]}")
    return len(response.json()["entry"])


def _post_many(server: Server, texts: list[str], clients: int) -> int:
    """Post the bundles from ``clients`` concurrent connections, largest first; return the entries.

    Each client takes the next bundle when it is done with one, so no connection
    idles while another still has a queue.
    """
    queue = sorted(texts, key=len, reverse=True)
    lock = threading.Lock()

    def client() -> int:
        count = 0
        with requests.Session() as http:
            while True:
                with lock:
                    if not queue:
                        return count
                    text = queue.pop(0)
                count += post_bundle(http, server, text)

    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(client) for _ in range(clients)]
        return sum(f.result() for f in futures)


def load_all(server: Server, clients: int, rounds: int = 1) -> dict[str, float]:
    """Load every bundle (the patient transactions ``rounds`` times) and return the timings."""
    directory, patients = bundles()
    figures: dict[str, float] = {}
    texts = [p.read_text() for p in patients] * rounds
    with requests.Session() as http:
        start = time.perf_counter()
        count = sum(post_bundle(http, server, p.read_text()) for p in directory)
        figures["batch_resources"] = count
        figures["batch_per_second"] = count / (time.perf_counter() - start)
        start = time.perf_counter()
        cpu = server.cpu_seconds()
        own_cpu = time.process_time()
        count = _post_many(server, texts, clients)
        figures["transaction_resources"] = count
        figures["transaction_per_second"] = count / (time.perf_counter() - start)
        figures["transaction_per_cpu_second"] = count / max(server.cpu_seconds() - cpu, 1e-9)
        figures["client_cpu_share"] = (time.process_time() - own_cpu) / max(time.perf_counter() - start, 1e-9)
        big = merged_transaction(patients)
        start = time.perf_counter()
        count = post_bundle(http, server, big)
        figures["big_bundle_mb"] = len(big) / 1024 / 1024
        figures["big_bundle_resources"] = count
        figures["big_bundle_per_second"] = count / (time.perf_counter() - start)
    figures["peak_rss_mb"] = server.peak_rss_mb()
    return figures


def main() -> None:
    """Run the benchmark on SQLite, and on PostgreSQL when a URL is given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database", action="append", default=None, help="PostgreSQL server URL (repeatable)"
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients posting patient bundles")
    # Three rounds (6,000 resources, about 3 s) mostly measured the workers' warm-up (new
    # database connections, statements prepared after their fifth use) and moved +-30 % from
    # run to run; ten rounds last long enough to measure a sustained load.
    parser.add_argument("--rounds", type=int, default=10, help="times the patient bundles are posted")
    args = parser.parse_args()
    targets: list[str | None] = [None, *(args.database or [])]
    for target in targets:
        with tempfile.TemporaryDirectory() as tmp, database(target, Path(tmp)) as url:
            load_before = os.getloadavg()[0]
            with serve(url, Path(tmp), workers=args.workers, threads=args.threads) as server:
                figures = load_all(server, args.clients, args.rounds)
            label = "postgresql" if url.startswith("postgresql") else "sqlite"
            print(
                f"== FHIR ingest over HTTP on {label} (gunicorn, {args.workers} workers x {args.threads} threads) =="
            )
            print(
                f"directory batches:     {figures['batch_resources']:.0f} resources, {figures['batch_per_second']:.0f}/s"
            )
            print(
                f"patient transactions:  {figures['transaction_resources']:.0f} resources, "
                f"{figures['transaction_per_second']:.0f}/s ({args.clients} clients, {args.rounds} rounds)"
            )
            print(
                f"  per server CPU-second: {figures['transaction_per_cpu_second']:.0f} (the app's own work, load aside)"
            )
            print(f"  client CPU:            {figures['client_cpu_share']:.0%} of one core (the loader)")
            print(
                f"one {figures['big_bundle_mb']:.1f} MB transaction: {figures['big_bundle_resources']:.0f} resources, "
                f"{figures['big_bundle_per_second']:.0f}/s"
            )
            print(f"peak server RSS:       {figures['peak_rss_mb']:.0f} MB (target < {TARGET_RSS_MB} MB)")
            print(
                f"target: >= {TARGET_PER_SECOND} resources/s on PostgreSQL; "
                f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
            )


if __name__ == "__main__":
    main()
