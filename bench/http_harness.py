"""Real-HTTP harness shared by the load test (tests/load) and bench/bench_http.py.

- :func:`prepare` builds a dedicated PostgreSQL database (tables straight from the
  models, no migrations: dj-stripe's take ~45 s) with users, tokens and plans, in a
  subprocess so the caller's Django (e.g. pytest's test database) is untouched.
- :class:`Gunicorn` serves the example project (or ``bench.floor_settings``) with
  several workers on 127.0.0.1.
- :func:`drive` runs client processes x threads, each on its own keep-alive
  ``http.client`` connection, for a bounded time, and gathers what they saw.

Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DEFAULT_PG = "postgres://postgres@127.0.0.1:5432"


# --- database ----------------------------------------------------------------------------


def recreate_database(url: str) -> None:
    """DROP + CREATE the database named in ``url`` (it must be a throwaway one)."""
    import psycopg

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    throwaway = name.startswith("kernia_") or "bench" in name
    assert throwaway, f"refusing to recreate {name!r}"
    with psycopg.connect(
        host=parsed.hostname,
        port=parsed.port or 5432,
        user=parsed.username,
        password=parsed.password,
        dbname="postgres",
        autocommit=True,
    ) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')


def prepare(url: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A fresh database at ``url`` holding ``spec``'s world; returns tokens per group.

    ``spec = {"groups": {"capped": {"users": 8, "included": 400, "overage": false}, ...}}``
    """
    recreate_database(url)
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "example_project.settings"}
    out = subprocess.run(
        [PYTHON, "-m", "bench.http_harness", "build", json.dumps(spec)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _build(spec: dict[str, Any]) -> dict[str, Any]:
    """(subprocess) Create tables without migrations, then plans, users and tokens."""
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    class NoMigrations(dict):
        def __contains__(self, item: object) -> bool:
            return True

        def __getitem__(self, item: str) -> None:
            return None

    settings.MIGRATION_MODULES = NoMigrations()
    call_command("migrate", run_syncdb=True, verbosity=0)

    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from kernia_billing.models import Feature, Plan, PlanFeature
    from kernia_billing.services.customers import get_or_create_customer
    from kernia_billing.services.entitlements.sync import sync_entitlements

    messages = Feature.objects.create(key="messages", name="Messages", kind="metered")
    user_model = get_user_model()
    tokens: dict[str, list[str]] = {}
    for order, (group, conf) in enumerate(spec["groups"].items()):
        plan = Plan.objects.create(key=group, name=group, is_default=order == 0)
        PlanFeature.objects.create(
            plan=plan,
            feature=messages,
            included=conf["included"],
            allow_overage=conf.get("overage", False),
            reset_period="month",
        )
        tokens[group] = []
        for index in range(conf["users"]):
            user = user_model.objects.create(username=f"{group}-{index}")
            customer = get_or_create_customer(user)
            customer.plan = plan
            customer.save(update_fields=["plan"])
            sync_entitlements(customer)
            tokens[group].append(Token.objects.create(user=user).key)
    return tokens


def _audit() -> dict[str, Any]:
    """(subprocess) The lifecycle's ledger audit: usage == sum of events since period start."""
    import django

    django.setup()
    from kernia_billing.services.ledger_audit import audit_ledger

    return {"drift": [str(d) for d in audit_ledger()]}


def audit(url: str) -> list[str]:
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "example_project.settings"}
    out = subprocess.run(
        [PYTHON, "-m", "bench.http_harness", "audit"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["drift"]  # type: ignore[no-any-return]


# --- server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Gunicorn:
    """gunicorn serving Django on 127.0.0.1 (gthread workers: keep-alive connections)."""

    database_url: str
    settings_module: str = "example_project.settings"
    workers: int = 4
    threads: int = 4
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    #: gunicorn's and Django's stderr (tracebacks of any 5xx); see :meth:`log_tail`.
    log_path: Path | None = None
    #: More environment for the server, e.g. ``STRIPE_API_BASE`` of a fake Stripe.
    extra_env: dict[str, str] = field(default_factory=dict)

    def start(self) -> Gunicorn:
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "DJANGO_SETTINGS_MODULE": self.settings_module,
            "DJANGO_DEBUG": "0",  # DEBUG keeps every query in memory
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "LOG_LEVEL": "ERROR",
            **self.extra_env,
        }
        with tempfile.NamedTemporaryFile(
            prefix="kernia-gunicorn-", suffix=".log", delete=False
        ) as log:
            self.log_path = Path(log.name)
            self.process = subprocess.Popen(
                [
                    PYTHON,
                    "-m",
                    "gunicorn",
                    "example_project.wsgi:application",
                    f"--bind=127.0.0.1:{self.port}",
                    f"--workers={self.workers}",
                    "--worker-class=gthread",
                    f"--threads={self.threads}",
                    "--keep-alive=60",
                    "--backlog=2048",
                    "--log-level=warning",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("gunicorn exited during start-up")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/api/auth/billing/plans")
                if conn.getresponse().status == 200:
                    conn.close()
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("gunicorn did not answer within 30 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log, minus the expected 4xx warnings."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(line for line in text if "Payment Required" not in line)[-lines * 200 :]


@contextmanager
def serving(server: Gunicorn) -> Iterator[Gunicorn]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- clients -----------------------------------------------------------------------------


class Client:
    """One keep-alive connection; ``post``/``get`` return (status, body, latency in ms)."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self.port = port
        self.token = token
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any, float]:
        headers = {"Authorization": f"Token {token or self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        for attempt in range(2):
            started = time.perf_counter()
            try:
                self.conn.request(method, path, data, headers)
                response = self.conn.getresponse()
                raw = response.read()
                elapsed = (time.perf_counter() - started) * 1000
                payload = json.loads(raw) if raw else None
                return response.status, payload, elapsed
            except (http.client.HTTPException, OSError):
                # The server closed an idle keep-alive connection: reconnect once.
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def post(self, path: str, body: Any, token: str | None = None) -> tuple[int, Any, float]:
        return self.call("POST", path, body, token)


#: ``worker(client, worker_id, deadline) -> list of records`` (must be importable: it
#: travels to the client processes by name).
Worker = Callable[[Client, str, float], list[Any]]


def _process_main(
    worker: Worker, port: int, process_id: int, threads: int, start_at: float, seconds: float
) -> list[Any]:
    records: list[Any] = []
    lock = threading.Lock()

    def run(thread_id: int) -> None:
        client = Client(port)
        delay = start_at - time.time()
        if delay > 0:
            time.sleep(delay)
        found = worker(client, f"p{process_id}t{thread_id}", time.time() + seconds)
        with lock:
            records.extend(found)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return records


def drive(
    worker: Worker, port: int, *, concurrency: int, seconds: float, processes: int | None = None
) -> tuple[list[Any], float]:
    """Run ``concurrency`` client loops (spread over processes) for ``seconds``.

    Returns every record the workers produced and the measured wall time.
    """
    processes = max(1, min(processes or 4, concurrency))
    per_process = [
        concurrency // processes + (i < concurrency % processes) for i in range(processes)
    ]
    start_at = time.time() + 0.5  # all loops start together, after the processes are up
    context = multiprocessing.get_context("fork")
    with context.Pool(processes) as pool:
        jobs = [
            pool.apply_async(_process_main, (worker, port, i, n, start_at, seconds))
            for i, n in enumerate(per_process)
        ]
        records = [record for job in jobs for record in job.get(timeout=seconds + 120)]
    return records, seconds


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * pct), len(ordered) - 1)]


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    command = sys.argv[1]
    if command == "build":
        print(json.dumps(_build(json.loads(sys.argv[2]))))
    elif command == "audit":
        print(json.dumps(_audit()))
    else:
        raise SystemExit(f"unknown command {command!r}")
