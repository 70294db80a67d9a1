"""Measure the evening booking rush: patients competing for online queue numbers under gunicorn.

Usage::

    python bench/booking_rush.py --database postgresql://postgres@127.0.0.1:5432/postgres
    python bench/booking_rush.py                      # SQLite in a temporary folder (smaller)
    python bench/booking_rush.py --workers 3 --threads 4 --client-processes 5   # other shapes
    python bench/booking_rush.py --database postgresql://... --floor   # and the floor after it

By default 5,000 patients compete for 1,000 online numbers (10 clinics x 100) with 50
concurrent clients, the way a window opening at 17:00 looks. The clients are keep-alive
connections spread over a few processes (50 threads in one Python process measure the
client's GIL, not the server), and the CPU the server, PostgreSQL and the clients used
during the rush is printed. Each request books through
``POST /api/v1/bookings`` as a receptionist would, with its own Idempotency-Key. Prints
successful bookings per second, p50/p99 latency, duplicates (must be 0) and lost bookings
(must be 0: every 201 is in the database, and every number in the database was answered
201). Target on a 2-core machine: >= 300 successful bookings/s, p99 < 250 ms.

Before the rush the same clients send as many ``GET /healthz`` (one ``SELECT 1``) to the same
server: the rate this stack reaches on this machine for a request that does almost nothing,
printed beside the bookings as the peer they are measured against. It also means the rush
meets workers that have served requests, as a hospital's server has by 17:00.

With ``--floor`` the same clients then rush ``bench/_booking_floor.py`` under the same gunicorn
on fresh sessions: a server that makes the same writes and none of the checks (see its
docstring). The bookings' rate is printed as a share of the floor's, so a run says how much of
the machine the checks, index rows and audit take.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fhir_ingest import database, serve

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from booking.models import Department

TARGET_PER_SECOND = 300
TARGET_P99_MS = 250
ZONE = ZoneInfo("Asia/Ho_Chi_Minh")


@dataclass
class Setup:
    token: str
    department_id: int
    session_ids: list[int]
    patient_ids: list[str]


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    created: list[dict[str, object]] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    last_success: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


def prepare(database_url: str, clinics: int, numbers: int, patients: int) -> Setup:
    """Create a site, a receptionist with a token, the clinics' sessions today and the patients."""
    from booking import services
    from his.accounts import NewUser, create_user, issue_token
    from his.db import Database
    from his.models import Site
    from his.patients import PatientDetails, create_patient

    db = Database(database_url)
    with db.session_scope() as session:
        site = Site(code="DIST", name="Bệnh viện huyện", kind="district", facility_code="01234")
        session.add(site)
        session.flush()
        user = create_user(
            session,
            NewUser(
                username="bench.desk",
                password=uuid.uuid4().hex,
                full_name="Lễ tân",
                role="receptionist",
                site_code="DIST",
            ),
        )
        token, _row = issue_token(session, user=user, scope="user/*.*", ttl_seconds=24 * 3600)
        department = services.create_department(session, site, code="KB", name="Khoa Khám bệnh")
        session_ids = create_sessions(session, department, clinics, numbers, prefix="PK")
    patient_ids: list[str] = []
    for start in range(0, patients, 500):
        with db.session_scope() as session:
            patient_ids += [
                create_patient(
                    session, PatientDetails(f"Bệnh nhân {i}", date(2018, 1, 1), "female"), site_id=site.id
                )
                for i in range(start, min(patients, start + 500))
            ]
    db.dispose()
    return Setup(token=token, department_id=department.id, session_ids=session_ids, patient_ids=patient_ids)


def create_sessions(
    session: Session, department: Department, clinics: int, numbers: int, prefix: str
) -> list[int]:
    """Open one session tomorrow in each of ``clinics`` new clinics; return their ids."""
    from booking import services

    # Tomorrow's sessions, the evening before: today's would close at 23:29 local time.
    tomorrow = datetime.now(ZONE).date() + timedelta(days=1)
    session_ids = []
    for index in range(clinics):
        clinic = services.create_clinic(
            session,
            department,
            code=f"{prefix}{index + 1}",
            name=f"Phòng khám {index + 1}",
            room=f"Phòng khám {index + 1}",
            online_capacity=numbers,
            walkin_capacity=20,
        )
        row = services.create_session(
            session, clinic, day=tomorrow, part="morning", starts=clock(0, 0), ends=clock(23, 59), zone=ZONE
        )
        session_ids.append(row.id)
    return session_ids


def floor_sessions(database_url: str, setup: Setup, clinics: int, numbers: int) -> list[int]:
    """Open as many sessions again, in other clinics of the department, for the floor's rush."""
    from booking.models import Department
    from his.db import Database

    db = Database(database_url)
    with db.session_scope() as session:
        department = session.get_one(Department, setup.department_id)
        session_ids = create_sessions(session, department, clinics, numbers, prefix="FLOOR")
    db.dispose()
    return session_ids


def _client_process(
    url: str,
    token: str,
    jobs: list[list[tuple[int, str]]],
    ready: Any,
    go: Any,
    results: Any,
    probe: bool = False,
) -> None:
    """Run one client process: a thread per job list, each on its own keep-alive connection.

    With ``probe`` each job is a ``GET /healthz`` instead of a booking. Puts (latencies,
    statuses, created, codes, last success moment, CPU seconds) on ``results``.
    """
    target = urlsplit(url)
    outcome = Outcome()

    def client(work: list[tuple[int, str]]) -> None:
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        for session_id, patient_id in work:
            if probe:
                began = time.monotonic()
                connection.request("GET", "/healthz")
                response = connection.getresponse()
                response.read()
                with outcome.lock:
                    outcome.latencies.append(time.monotonic() - began)
                    outcome.statuses[response.status] += 1
                continue
            body = json.dumps({"session_id": session_id, "patient_id": patient_id})
            headers = {
                "Authorization": f"Bearer {token}",
                "Idempotency-Key": uuid.uuid4().hex,
                "Content-Type": "application/json",
            }
            began = time.monotonic()
            connection.request("POST", "/api/v1/bookings", body=body, headers=headers)
            response = connection.getresponse()
            answer = json.loads(response.read())
            ended = time.monotonic()
            with outcome.lock:
                outcome.latencies.append(ended - began)
                outcome.statuses[response.status] += 1
                if response.status == 201:
                    outcome.created.append(
                        {
                            "id": answer["id"],
                            "session": {"id": answer["session"]["id"]},
                            "queue_number": answer["queue_number"],
                        }
                    )
                    outcome.last_success = max(outcome.last_success, ended)
                else:
                    outcome.codes[str(answer.get("code"))] += 1
        connection.close()

    threads = [threading.Thread(target=client, args=(work,)) for work in jobs]
    ready.set()
    go.wait()
    cpu = time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(
        (
            outcome.latencies,
            dict(outcome.statuses),
            outcome.created,
            dict(outcome.codes),
            outcome.last_success,
            time.process_time() - cpu,
        )
    )


def rush(
    url: str, setup: Setup, clients: int, processes: int, *, probe: bool = False
) -> tuple[Outcome, float, float]:
    """Send one booking request per patient from ``clients`` connections spread over processes.

    Request ``i`` goes to client ``i % clients``, so the clinics fill evenly, as under a
    shared queue. With ``probe`` every request is a ``GET /healthz`` instead. Returns what
    came back, the elapsed seconds and the clients' CPU seconds.
    """
    per_client: list[list[tuple[int, str]]] = [[] for _ in range(clients)]
    for index, patient_id in enumerate(setup.patient_ids):
        per_client[index % clients].append((setup.session_ids[index % len(setup.session_ids)], patient_id))
    processes = max(1, min(processes, clients))
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    go = context.Event()
    workers = []
    for number in range(processes):
        ready = context.Event()
        worker = context.Process(
            target=_client_process,
            args=(url, setup.token, per_client[number::processes], ready, go, results, probe),
        )
        worker.start()
        ready.wait()
        workers.append(worker)
    began = time.monotonic()
    go.set()
    outcome = Outcome()
    cpu = 0.0
    for _ in workers:
        latencies, statuses, created, codes, last_success, used = results.get()
        outcome.latencies += latencies
        outcome.statuses.update(statuses)
        outcome.created += created
        outcome.codes.update(codes)
        outcome.last_success = max(outcome.last_success, last_success)
        cpu += used
    elapsed = time.monotonic() - began
    for worker in workers:
        worker.join()
    outcome.last_success -= began
    return outcome, elapsed, cpu


def cpu_by_process(pids: list[int]) -> dict[int, float]:
    """Return each process's user and system CPU seconds (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / tick
    return found


def cpu_seconds(pids: list[int]) -> float:
    """Sum the user and system CPU seconds of processes (Linux /proc)."""
    return sum(cpu_by_process(pids).values())


def cpu_used_since(before: dict[int, float], pids: list[int]) -> float:
    """CPU seconds used since ``before`` by ``pids``; a process born since counts in full."""
    return sum(now - before.get(pid, 0.0) for pid, now in cpu_by_process(pids).items())


def processes_named(name: str) -> list[int]:
    """List the processes whose command name is ``name`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def check(database_url: str, outcome: Outcome) -> tuple[int, int]:
    """Count duplicate numbers and lost bookings between the answers and the database."""
    from sqlalchemy import select

    from booking.models import Booking
    from his.db import Database

    answered = Counter((b["session"]["id"], b["queue_number"]) for b in outcome.created)  # type: ignore[index]
    duplicates = sum(n - 1 for n in answered.values() if n > 1)
    db = Database(database_url)
    with db.session_scope() as session:
        stored = {
            (row.session_id, row.queue_number, row.id)
            for row in session.execute(select(Booking.session_id, Booking.queue_number, Booking.id))
        }
    db.dispose()
    stored_ids = {row[2] for row in stored}
    answered_ids = {b["id"] for b in outcome.created}
    duplicates += len(stored) - len({(s, n) for s, n, _ in stored})
    lost = len(answered_ids - stored_ids) + len(stored_ids - answered_ids)
    return duplicates, lost


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", help="a PostgreSQL URL (default: a temporary SQLite file)")
    parser.add_argument("--patients", type=int, default=5000)
    parser.add_argument("--clinics", type=int, default=10)
    parser.add_argument("--numbers", type=int, default=100, help="online numbers per clinic")
    parser.add_argument("--clients", type=int, default=50, help="concurrent client connections")
    parser.add_argument(
        "--client-processes", type=int, default=5, help="processes the clients run in (threads share a GIL)"
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also rush bench/_booking_floor.py, a server that only writes the booking (PostgreSQL only)",
    )
    args = parser.parse_args()
    if args.floor and not args.database:
        parser.error("--floor runs on PostgreSQL only: give --database")
    with tempfile.TemporaryDirectory() as folder, database(args.database, Path(folder)) as url:
        label = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
        print(
            f"== booking rush on {label} (gunicorn, {args.workers} workers x {args.threads} threads, "
            f"{args.clients} clients in {args.client_processes} processes) =="
        )
        setup = prepare(url, args.clinics, args.numbers, args.patients)
        print(
            f"prepared {len(setup.session_ids)} sessions x {args.numbers} numbers, {len(setup.patient_ids)} patients"
        )
        with serve(url, Path(folder), workers=args.workers, threads=args.threads) as server:
            # The same clients against GET /healthz (one SELECT 1): what this stack answers at
            # most on this machine, measured in the same run as the bookings.
            probed, probe_seconds, _cpu = rush(
                server.url, setup, args.clients, args.client_processes, probe=True
            )
            servers = server.pids()
            postgres = label == "PostgreSQL"
            server_before = cpu_seconds(servers)
            # Backends the server's pools open during the rush count too.
            database_before = cpu_by_process(processes_named("postgres")) if postgres else {}
            outcome, elapsed, client_cpu = rush(server.url, setup, args.clients, args.client_processes)
            server_cpu = cpu_seconds(servers) - server_before
            database_cpu = cpu_used_since(database_before, processes_named("postgres")) if postgres else 0.0
        duplicates, lost = check(url, outcome)
        floor, floor_cpu = None, 0.0
        if args.floor:
            floor_setup = replace(setup, session_ids=floor_sessions(url, setup, args.clinics, args.numbers))
            with serve(
                url,
                Path(folder),
                workers=args.workers,
                threads=args.threads,
                app="bench._booking_floor:create_app()",
            ) as server:
                servers = server.pids()
                floor_before = cpu_seconds(servers)
                floor, _elapsed, _cpu = rush(server.url, floor_setup, args.clients, args.client_processes)
                floor_cpu = cpu_seconds(servers) - floor_before
    successes = len(outcome.created)
    per_second = successes / outcome.last_success if outcome.last_success else 0.0
    p50 = percentile(outcome.latencies, 0.50) * 1000
    p99 = percentile(outcome.latencies, 0.99) * 1000
    requests = sum(outcome.statuses.values())
    print(
        f"requests: {requests} in {elapsed:.2f} s; statuses {dict(outcome.statuses)}; "
        f"refusals {dict(outcome.codes)}"
    )
    print(
        f"successful bookings: {successes} ({per_second:.0f}/s until the last number went; target >= {TARGET_PER_SECOND}/s)"
    )
    print(f"latency: p50 {p50:.1f} ms, p99 {p99:.1f} ms (target p99 < {TARGET_P99_MS} ms)")
    print(f"duplicates: {duplicates} (must be 0); lost bookings: {lost} (must be 0)")
    probe_rate = sum(probed.statuses.values()) / probe_seconds
    print(
        f"same clients, GET /healthz: {probe_rate:.0f}/s, p99 {percentile(probed.latencies, 0.99) * 1000:.1f} ms "
        f"(statuses {dict(probed.statuses)}); bookings/s are {per_second / probe_rate:.0%} of it"
    )
    print(
        f"CPU during the rush: server {server_cpu:.1f} s, database {database_cpu:.1f} s "
        f"(all postgres processes), clients {client_cpu:.1f} s, over {elapsed:.1f} s on {os.cpu_count()} cores; "
        f"per request: server {server_cpu / max(1, requests) * 1000:.1f} ms, "
        f"clients {client_cpu / max(1, requests) * 1000:.2f} ms"
    )

    if floor is not None and floor.created:
        floor_rate = len(floor.created) / floor.last_success if floor.last_success else 0.0
        print(
            f"floor (bench/_booking_floor.py: the same writes, none of the checks, index rows or audit): "
            f"{floor_rate:.0f} bookings/s, p50 {percentile(floor.latencies, 0.50) * 1000:.1f} ms, "
            f"p99 {percentile(floor.latencies, 0.99) * 1000:.1f} ms, server CPU "
            f"{floor_cpu / max(1, sum(floor.statuses.values())) * 1000:.1f} ms per request; "
            f"bookings/s are {per_second / floor_rate:.0%} of it"
        )


if __name__ == "__main__":
    main()
