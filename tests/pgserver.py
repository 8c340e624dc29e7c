"""A throw-away PostgreSQL server on loopback, for the tests and benchmarks.

The server binaries come from the distribution's packages (``make test`` installs them
when missing). The cluster lives in a temporary directory and listens on 127.0.0.1 on a
free port; as root it runs as the ``postgres`` user (PostgreSQL refuses root).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from tests.helpers import free_fixed_port


def binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    def __init__(self) -> None:
        bindir = binaries()
        if bindir is None:
            raise RuntimeError(
                "PostgreSQL server binaries not found: `make test` installs the distribution's"
                " postgresql package"
            )
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="halite-pg-"))
        self.data = self.root / "data"
        self.port = free_fixed_port()
        self.user = "halite"
        self._as = []
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        if not self.data.exists():
            self._run(
                str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user,
                "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8",
            )  # fmt: skip
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60",
            "-l", str(self.root / "server.log"),
            "-o", f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            "start",
        )  # fmt: skip
        return self

    def replica(self) -> PostgresServer:
        """A streaming replica of this server (pg_basebackup -R), started on a port of its
        own; hot standby, so that it serves reads."""
        replica = PostgresServer()
        self._run(
            str(self.bindir / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.port),
            "-U", self.user, "-D", str(replica.data), "-R", "-X", "stream", "-c", "fast",
        )  # fmt: skip
        return replica.start()

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-m", mode, "stop")

    def _processes(self) -> list[int]:
        """The postmaster and every process it started."""
        postmaster = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        found = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(postmaster)], capture_output=True, text=True
        ).stdout.split()
        return [postmaster, *map(int, found)]

    def cpu_seconds(self) -> float:
        """CPU time (user and system) the server has used so far: the postmaster's, its
        exited backends' (reaped: counted in its children's times) and the live ones'."""
        total = 0
        for n, pid in enumerate(self._processes()):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile: counted with the postmaster's children
            # utime, stime (and for the postmaster cutime, cstime): fields 14-17.
            total += sum(int(x) for x in fields[11 : 15 if n == 0 else 13])
        return total / os.sysconf("SC_CLK_TCK")

    def freeze(self) -> None:
        """Stop every server process (SIGSTOP): connections are accepted by the kernel and
        queries sent, but nothing ever answers, as with a hung host or disk."""
        for pid in self._processes():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._processes():
            os.kill(pid, signal.SIGCONT)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None, template: str = "template0") -> str:
        """A new database, empty or a copy of ``template``; returns its URL."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        engine.dispose()
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = sa.make_url(url).database
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        engine.dispose()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                engine = sa.create_engine(self.url())
                with engine.connect():
                    pass
                engine.dispose()
                return
            except sa.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
