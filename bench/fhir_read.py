"""Measure FHIR reads over HTTP under gunicorn, against the same server's /healthz.

Usage::

    python bench/fhir_read.py                      # SQLite in a temporary folder
    python bench/fhir_read.py --database postgresql://postgres@127.0.0.1:5432/postgres

Loads the Synthea bundles, then measures read by id, a first search page
(``Observation?patient=…&_sort=-date``) and ``Patient/…/$everything`` with 1 and 8
concurrent clients (each a process of its own on a keep-alive connection), printing
p50/p99 latency, requests per second and read throughput as a share of ``GET /healthz``
measured in the same run.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from fhir_ingest import Server, bundles, database, post_bundle, serve

TARGET_READ_SHARE = 0.60
TARGET_SEARCH_P99_MS = 30.0


@dataclass
class Figures:
    """Latencies and throughput of one scenario."""

    name: str
    clients: int
    requests: int
    seconds: float
    latencies_ms: list[float]

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def load(server: Server) -> tuple[list[str], list[str]]:
    """Load every Synthea bundle; return the patient ids and some Observation ids."""
    directory, patients = bundles()
    patient_ids: list[str] = []
    observation_ids: list[str] = []
    with requests.Session() as session:
        for path in directory:
            post_bundle(session, server, path.read_text())
        for path in patients:
            response = session.post(
                f"{server.url}/fhir/R4",
                data=path.read_bytes(),
                headers={"Content-Type": "application/fhir+json", "Authorization": f"Bearer {server.token}"},
                timeout=600,
            )
            response.raise_for_status()
            for entry in response.json()["entry"]:
                rtype, rid = entry["response"]["location"].split("/")[:2]
                if rtype == "Patient":
                    patient_ids.append(rid)
                elif rtype == "Observation" and len(observation_ids) < 500:
                    observation_ids.append(rid)
    return patient_ids, observation_ids


def analyze(database_url: str) -> None:
    """Refresh the planner's statistics, as autovacuum would soon after a bulk load."""
    from sqlalchemy import text

    from his.db import make_engine

    engine = make_engine(database_url)
    with engine.connect() as connection:
        connection.execute(text("ANALYZE"))
        connection.commit()
    engine.dispose()


def _client(
    host: str, port: int, token: str, paths: list[str], offset: int, duration: float, out: Any
) -> None:
    """Send GETs on one keep-alive connection for ``duration`` seconds; put the latencies (ms) on ``out``."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
    connection = http.client.HTTPConnection(host, port, timeout=30)
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration
    index = offset
    while time.perf_counter() < stop_at:
        path = paths[index % len(paths)]
        index += 1
        start = time.perf_counter()
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            out.put(RuntimeError(f"{path}: {response.status}"))
            return
        latencies.append((time.perf_counter() - start) * 1000)
    connection.close()
    out.put(latencies)


def run(server: Server, name: str, paths: list[str], clients: int, duration: float) -> Figures:
    """Send GETs for ``paths`` (round robin) from ``clients`` processes for ``duration`` seconds.

    Each client is a process of its own on one keep-alive connection: client threads of one
    process would wait for each other's GIL, and that wait would count as the server's.
    """
    host, port = server.url.removeprefix("http://").split(":")
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    processes = [
        context.Process(
            target=_client,
            args=(host, int(port), server.token, paths, n * len(paths) // clients, duration, out),
        )
        for n in range(clients)
    ]
    begin = time.perf_counter()
    for process in processes:
        process.start()
    latencies: list[float] = []
    for _ in processes:
        result = out.get()
        if isinstance(result, Exception):
            raise result
        latencies.extend(result)
    for process in processes:
        process.join()
    elapsed = time.perf_counter() - begin
    return Figures(name, clients, len(latencies), elapsed, latencies)


def main() -> None:
    """Load the data, then measure every scenario with 1 and 8 clients."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database", action="append", default=None, help="PostgreSQL server URL (repeatable)"
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each scenario")
    args = parser.parse_args()
    for target in [None, *(args.database or [])]:
        with tempfile.TemporaryDirectory() as tmp, database(target, Path(tmp)) as url:
            with serve(url, Path(tmp), workers=args.workers, threads=8) as server:
                patient_ids, observation_ids = load(server)
                analyze(url)
                base = "/fhir/R4"
                scenarios: list[tuple[str, list[str]]] = [
                    ("GET /healthz", ["/healthz"]),
                    ("read Observation by id", [f"{base}/Observation/{i}" for i in observation_ids]),
                    (
                        "search Observation?patient&_sort=-date",
                        [f"{base}/Observation?patient={p}&_sort=-date" for p in patient_ids],
                    ),
                    ("Patient/$everything", [f"{base}/Patient/{p}/$everything" for p in patient_ids]),
                ]
                for name, paths in scenarios:
                    run(server, name, paths, 2, 0.5)
                results: dict[tuple[str, int], Figures] = {}
                for clients in (1, 8):
                    for name, paths in scenarios:
                        results[(name, clients)] = run(server, name, paths, clients, args.seconds)
            label = "postgresql" if url.startswith("postgresql") else "sqlite"
            _report(label, args.workers, results)


def _report(label: str, workers: int, results: dict[tuple[str, int], Figures]) -> None:
    print(f"== FHIR reads over HTTP on {label} (gunicorn, {workers} workers x 8 threads) ==")
    print(f"{'scenario':42} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs healthz':>10}")
    for (name, clients), figures in results.items():
        health = results[("GET /healthz", clients)].per_second
        share = figures.per_second / health if health else 0.0
        print(
            f"{name:42} {clients:>7} {figures.per_second:>8.0f} {figures.percentile(0.5):>8.1f} "
            f"{figures.percentile(0.99):>8.1f} {share:>9.0%}"
        )
    print(
        f"targets: read >= {TARGET_READ_SHARE:.0%} of /healthz; first-page search p99 < {TARGET_SEARCH_P99_MS:.0f} ms"
    )


if __name__ == "__main__":
    main()
