"""A PgBouncer in transaction mode in front of a PostgreSQL server, as Neon's -pooler endpoint is.

In transaction mode a client's consecutive transactions may run on different server connections:
session state (SET, session advisory locks, prepared statements) does not survive between them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["PgBouncer", "find_pgbouncer"]


def find_pgbouncer() -> str | None:
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgBouncer:
    def __init__(self, server_url: str, pool_size: int = 4, query_wait_timeout: int = 120) -> None:
        binary = find_pgbouncer()
        if binary is None:
            raise RuntimeError("pgbouncer not found (Debian: apt-get install pgbouncer)")
        self.binary = binary
        parts = urlsplit(server_url)
        self.server_host = parts.hostname or "127.0.0.1"
        self.server_port = parts.port or 5432
        self.user = parts.username or "postgres"
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="tunefleet-pgbouncer-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.pool_size = pool_size
        self.query_wait_timeout = query_wait_timeout

    def start(self) -> PgBouncer:
        ini = self.root / "pgbouncer.ini"
        (self.root / "users.txt").write_text(f'"{self.user}" ""\n')
        ini.write_text(
            "[databases]\n"
            f"* = host={self.server_host} port={self.server_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\n"
            f"unix_socket_dir = {self.root}\n"
            "auth_type = trust\n"
            f"auth_file = {self.root / 'users.txt'}\n"
            "pool_mode = transaction\n"
            # Each test has its own database, hence its own pool: keep pools small and let idle
            # server connections go quickly, or they add up past the server's max_connections.
            f"max_client_conn = 500\ndefault_pool_size = {self.pool_size}\n"
            f"max_db_connections = {self.pool_size + 2 if self.pool_size > 1 else 1}\n"
            # How long a client waits for a server connection before PgBouncer drops it.
            f"query_wait_timeout = {self.query_wait_timeout}\n"
            "server_idle_timeout = 2\nserver_lifetime = 60\n"
            "server_reset_query =\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
        )
        command = [self.binary, str(ini)]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            user = pwd.getpwnam("postgres")
            shutil.chown(self.root, user.pw_uid, user.pw_gid)
            for child in self.root.iterdir():
                shutil.chown(child, user.pw_uid, user.pw_gid)
            command = ["runuser", "-u", "postgres", "--", *command]
        # Its log goes to a file: a pipe nobody reads fills up and stalls PgBouncer.
        self.log = (self.root / "pgbouncer.log").open("wb")
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            if self.proc.poll() is not None:
                log = (self.root / "pgbouncer.log").read_text(errors="replace")
                raise RuntimeError(f"pgbouncer exited: {log}")
            time.sleep(0.05)
        raise TimeoutError("pgbouncer did not start")

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if hasattr(self, "log"):
            self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)
