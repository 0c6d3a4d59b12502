"""A private PostgreSQL server for tests that stop and start the warehouse.

The shared server on :5432 is never restarted (other tests and other people use it). This module runs
`initdb` into a temporary directory and `pg_ctl` on a free 127.0.0.1 port, with trust authentication
and fsync off (a throwaway cluster). PostgreSQL refuses to run as root, so when the tests run as root
the binaries run as the `postgres` user (`runuser -u postgres --`) in a directory that user owns.

Example:
    ```python
    with PrivatePostgres() as server:
        engine = sa.create_engine(server.url)
        ...
        server.restart(mode="immediate")  # a crash: no checkpoint, recovery on start
    ```
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

from etl_assets_tests.support import free_port

StopMode = Literal["smart", "fast", "immediate"]


def _bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb (or the one on PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")


class PrivatePostgres:
    """One throwaway PostgreSQL cluster on 127.0.0.1 that a test may stop, start and crash."""

    def __init__(self, *, run_as: str = "postgres") -> None:
        self.bin = _bin_dir()
        self.port = free_port()
        self.user: str | None = run_as if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="etl-private-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.superuser = "etl"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the `postgres` database (psycopg 3)."""
        return f"postgresql+psycopg://{self.superuser}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}\n"
                f"server log: {self._log_tail()}"
            )
        return result

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def init(self) -> None:
        """Create the cluster: trust auth on loopback, superuser `etl`, no fsync (throwaway data)."""
        self._run("initdb", "-D", str(self.data), "-U", self.superuser, "--auth=trust", "--no-sync",
                  "-E", "UTF8", "--locale=C.UTF-8")  # fmt: skip
        # fsync off is safe for a process crash (the OS keeps the written WAL); synchronous_commit
        # must stay on, or a crash restart drops the last commits and the tests see data vanish.
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = ''\n"
                "fsync = off\nfull_page_writes = off\nshared_buffers = 32MB\n"
            )

    def start(self, timeout: float = 30) -> None:
        """Start the server and wait until it accepts connections."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(int(timeout)), "start",
                  timeout=timeout + 10)  # fmt: skip

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server: `fast` disconnects sessions and rolls back, `immediate` is a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: StopMode = "fast") -> None:
        """Stop (in `mode`) and start again."""
        self.stop(mode)
        self.start()

    def is_running(self) -> bool:
        """True when pg_ctl sees the server running."""
        try:
            self._run("pg_ctl", "-D", str(self.data), "status")
        except RuntimeError:
            return False
        return True

    def close(self) -> None:
        """Stop the server (if running) and remove its directory."""
        try:
            if self.data.exists() and self.is_running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        try:
            self.init()
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for(condition: object, *, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `condition()` until it is truthy; AssertionError naming `what` after `timeout` seconds."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
