"""Graft's database use behind a real PgBouncer in transaction mode (a common production setup): the schema upgrade,
and many sessions running the job state machine at once over two server connections, so that consecutive
transactions of one client connection land on different server sessions. Server-side prepared statements would
fail here ("prepared statement ... does not exist"); Graft makes none (docs/operations.md).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import create_engine, func, select, text

from graft.cli.demo import _free_port
from graft.shared import lifecycle
from graft.shared.db import get_engine, session_scope
from graft.shared.models import Job, JobEvent
from graft.shared.schema import upgrade
from tests.helpers import POSTGRES_URL, at_once

pytestmark = [pytest.mark.postgres,
              pytest.mark.skipif(shutil.which("pgbouncer") is None and not Path("/usr/sbin/pgbouncer").exists(),
                                 reason="pgbouncer is not installed (.ci/run installs Debian's)")]
THREADS, ROUNDS = 8, 12


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def bouncer_url() -> Iterator[str]:
    """A new database behind a PgBouncer process in transaction mode with two server connections."""
    name = f"graft_pgb_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    # PgBouncer refuses to run as root: as root (CI, a developer's container) it runs as postgres, in a folder of its own.
    base, port = Path(tempfile.mkdtemp(prefix="graft-pgbouncer-")), _free_port()
    as_user = ["-u", "postgres"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(base, "postgres")
    (base / "users.txt").write_text('"postgres" ""\n')
    (base / "pgbouncer.ini").write_text(
        f"[databases]\ngraft = host=127.0.0.1 port=5432 dbname={name} user=postgres\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = trust\n"
        f"auth_file = {base / 'users.txt'}\npool_mode = transaction\ndefault_pool_size = 2\nmax_client_conn = 100\n"
        f"logfile = {base / 'pgbouncer.log'}\npidfile = {base / 'pgbouncer.pid'}\n")
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    proc = subprocess.Popen([binary, *as_user, str(base / "pgbouncer.ini")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/graft"
    try:
        deadline = time.monotonic() + 20
        while not _listening(port):
            assert proc.poll() is None and time.monotonic() < deadline, (base / "pgbouncer.log").read_text()
            time.sleep(0.1)
        yield url
    finally:
        get_engine(url).dispose()
        proc.terminate()
        proc.wait(10)
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
        shutil.rmtree(base, ignore_errors=True)


def test_upgrade_and_job_lifecycles_through_pgbouncer(bouncer_url: str) -> None:
    upgrade(bouncer_url)  # the advisory lock is a transaction lock: transaction mode keeps it for the whole upgrade

    def lifecycles(thread: int) -> int:
        for n in range(ROUNDS):
            with session_scope(bouncer_url) as session:
                job = lifecycle.create_job(session, "train", {"thread": thread, "n": n})
                job_id = job.id
            with session_scope(bouncer_url) as session:
                job = lifecycle.claim(session, job_id, f"w{thread}", 1000 + thread, 60, 3, lambda _job: True)
                assert job is not None
            with session_scope(bouncer_url) as session:
                assert lifecycle.renew_lease(session, job_id, f"w{thread}", 1000 + thread, 1, 60) == (True, False)
            with session_scope(bouncer_url) as session:
                lifecycle.transition(session, session.get(Job, job_id), lifecycle.SUCCEEDED)
        return ROUNDS

    assert at_once(lifecycles, THREADS, timeout=120) == [ROUNDS] * THREADS
    with session_scope(bouncer_url) as session:
        assert session.scalar(select(func.count()).where(Job.status == lifecycle.SUCCEEDED)) == THREADS * ROUNDS
        assert session.scalar(select(func.count()).select_from(JobEvent)) == THREADS * ROUNDS * 3
