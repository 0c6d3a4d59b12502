"""Private MariaDB servers for tests that must restart a server or replicate from it.

The shared server on 127.0.0.1:3306 is used by every test at once, so nothing may restart it,
change its global settings or make it a replication primary. `PrivateMariaDB` runs its own
`mariadbd` from the system MariaDB installation, in a temporary directory, on a free loopback port,
and can stop, start and restart it on that same port. `replicate()` makes one instance a replica
of another (GTID, `MASTER_USE_GTID=slave_pos`).

Data directories are copied from one `mariadb-install-db` template per `ServerFarm`, so a second
server costs a directory copy (~0.2 s) instead of another bootstrap (~2 s).

Example:
    ```python
    with ServerFarm() as farm:
        primary = farm.server(server_id=1)
        replica = farm.server(server_id=2)
        replicate(primary=primary, replica=replica)
        primary.execute("CREATE DATABASE d")
        replica.wait_caught_up(primary)
        primary.restart()
    ```
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from etl_assets_tests.support import free_port

USER = "etl"
PASSWORD = "private-mariadb-pass"  # test-only, for the servers of this module
_REPL_USER = "repl"
_REPL_PASSWORD = "repl-pass"
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 30.0


class ServerError(RuntimeError):
    """A private server did not start or stop; the message has the tail of its error log."""


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/usr/local/sbin")
        if found:
            return found
    raise ServerError(
        f"none of {', '.join(names)} is installed; install mariadb-server (scripts/stack.sh does)"
    )


class PrivateMariaDB:
    """One `mariadbd` in `base`, listening on 127.0.0.1:`port` (kept across restarts)."""

    def __init__(self, base: Path, *, server_id: int, port: int, extra_args: Sequence[str] = ()) -> None:
        self.base = base
        self.datadir = base / "data"
        self.socket = base / "mysql.sock"
        self.log_file = base / "error.log"
        self.server_id = server_id
        self.port = port
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self._admin: sa.Engine | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server and wait until it accepts connections (raises ServerError if it dies)."""
        if self.process is not None and self.process.poll() is None:
            return
        args = [
            _binary("mariadbd", "mysqld"),
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--pid-file={self.base / 'mysqld.pid'}",
            f"--log-error={self.log_file}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--server-id={self.server_id}",
            f"--log-bin={self.datadir / 'binlog'}",
            "--binlog-format=ROW",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            *self.extra_args,
        ]
        if os.geteuid() == 0:
            args.append("--user=root")  # mariadbd refuses to run as root without it
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise ServerError(f"mariadbd on port {self.port} exited at start:\n{self._log_tail()}")
            try:
                with self.admin().connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
                return
            except sa.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"mariadbd on port {self.port} did not answer:\n{self._log_tail()}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Shut the server down cleanly (SIGTERM), SIGKILL if it takes longer than 30 s."""
        if self._admin is not None:
            self._admin.dispose()
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port and data: every connection to it dies."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self.process is not None and self.process.poll() is None

    # -- connections -----------------------------------------------------------------------------------

    def admin(self) -> sa.Engine:
        """An engine connected as root through the unix socket (no password)."""
        if self._admin is None:
            self._admin = sa.create_engine(
                f"mysql+pymysql://root@localhost/?unix_socket={self.socket}", pool_pre_ping=True
            )
        return self._admin

    def url(self, database: str = "", *, user: str = USER, password: str = PASSWORD) -> str:
        """A TCP URL for `user` (default: the test user, with its password in the URL)."""
        return (
            sa.URL.create("mysql+pymysql", username=user, password=password, host="127.0.0.1", port=self.port,
                          database=database or None)
            .render_as_string(hide_password=False)
        )  # fmt: skip

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        """Run one statement as root and commit; returns the rows (empty for statements without)."""
        with self.admin().begin() as conn:
            result = conn.execute(sa.text(sql), params or {})
            return list(result) if result.returns_rows else []

    def status(self) -> dict[str, Any]:
        """`SHOW SLAVE STATUS` as a mapping ({} when the server is not a replica)."""
        with self.admin().connect() as conn:
            row = conn.exec_driver_sql("SHOW SLAVE STATUS").first()
        return dict(row._mapping) if row is not None else {}

    def wait_caught_up(self, primary: PrivateMariaDB, timeout: float = 30.0) -> None:
        """Wait until this replica has applied everything `primary` has written so far."""
        position = primary.execute("SELECT @@GLOBAL.gtid_binlog_pos")[0][0]
        done = self.execute("SELECT MASTER_GTID_WAIT(:p, :t)", {"p": position, "t": timeout})[0][0]
        if done != 0:
            raise ServerError(
                f"replica on port {self.port} did not reach {position} in {timeout:g}s: {self.status()}"
            )

    def wait_for(self, what: str, check: Any, timeout: float = 30.0) -> Any:
        """Poll `check()` until it returns something truthy; raise naming `what` after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise ServerError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(0.05)

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no error log)"


class ServerFarm:
    """A temporary directory of private servers sharing one installed template; stops them all on exit."""

    def __init__(self) -> None:
        # Short path: a unix socket path must fit in 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="pmdb-"))
        self.servers: list[PrivateMariaDB] = []
        self._template: Path | None = None

    def __enter__(self) -> ServerFarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every server and delete the directory."""
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _installed(self) -> Path:
        if self._template is None:
            template = self.root / "template"
            args = [
                _binary("mariadb-install-db", "mysql_install_db"),
                "--no-defaults",
                f"--datadir={template}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--innodb-log-file-size=16M",
            ]
            if os.geteuid() == 0:
                args.append("--user=root")
            done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
            if done.returncode != 0:
                raise ServerError(f"mariadb-install-db failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
            self._template = template
        return self._template

    def server(self, *, server_id: int, extra_args: Sequence[str] = ()) -> PrivateMariaDB:
        """A started server with the test user (`USER`/`PASSWORD`, all privileges) on a free port."""
        base = self.root / f"s{server_id}"
        base.mkdir()
        shutil.copytree(self._installed(), base / "data")
        server = PrivateMariaDB(base, server_id=server_id, port=free_port(), extra_args=extra_args)
        self.servers.append(server)
        server.start()
        # Created per server and kept out of the binlog, so a replica's copy never conflicts.
        with server.admin().begin() as conn:
            conn.exec_driver_sql("SET SESSION sql_log_bin = 0")
            conn.execute(sa.text(f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY :p"), {"p": PASSWORD})
            conn.exec_driver_sql(f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'127.0.0.1'")
            conn.exec_driver_sql("SET SESSION sql_log_bin = 1")  # the pooled connection is reused
        return server


def replicate(*, primary: PrivateMariaDB, replica: PrivateMariaDB, timeout: float = 30.0) -> None:
    """Make `replica` replicate everything `primary` writes from now on (GTID positions)."""
    with primary.admin().begin() as conn:
        conn.exec_driver_sql("SET SESSION sql_log_bin = 0")
        conn.execute(
            sa.text(f"CREATE USER '{_REPL_USER}'@'127.0.0.1' IDENTIFIED BY :p"), {"p": _REPL_PASSWORD}
        )
        conn.exec_driver_sql(f"GRANT REPLICATION SLAVE ON *.* TO '{_REPL_USER}'@'127.0.0.1'")
        conn.exec_driver_sql("SET SESSION sql_log_bin = 1")
    position = primary.execute("SELECT @@GLOBAL.gtid_binlog_pos")[0][0]
    with replica.admin().begin() as conn:
        conn.execute(sa.text("SET GLOBAL gtid_slave_pos = :p"), {"p": position})
        conn.execute(
            sa.text(
                "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = :port, MASTER_USER = :u, "
                "MASTER_PASSWORD = :p, MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1"
            ),
            {"port": primary.port, "u": _REPL_USER, "p": _REPL_PASSWORD},
        )
        conn.exec_driver_sql("START SLAVE")
    replica.wait_for(
        "replication to run",
        lambda: (
            replica.status().get("Slave_IO_Running") == "Yes"
            and replica.status().get("Slave_SQL_Running") == "Yes"
        ),
        timeout,
    )
