"""A throwaway PostgreSQL server started from the binaries on this machine, for tests.

Used when no server is reachable at all, and by tests that need what the shared server must not
do: password authentication (the shared one trusts everyone on loopback) or a restart.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["ThrowawayPostgres", "find_pg_bin"]


def find_pg_bin() -> Path | None:
    """The directory holding initdb and pg_ctl, or None if PostgreSQL is not installed."""
    initdb = shutil.which("initdb")
    candidates = [Path(initdb).resolve().parent] if initdb else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThrowawayPostgres:
    """``initdb`` + ``pg_ctl start`` in a temporary directory, on a free loopback port.

    With ``password`` set, the superuser ``postgres`` needs it (scram-sha-256). PostgreSQL
    refuses to run as root, so as root the server runs as the ``postgres`` system user.
    """

    def __init__(
        self, password: str | None = None, ssl: bool = False, settings: dict[str, str] | None = None
    ) -> None:
        self.ssl = ssl
        self.settings = settings or {}
        bin_dir = find_pg_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found")
        self.bin_dir = bin_dir
        self.password = password
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="tunefleet-pg-"))
        self.data = self.root / "data"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> ThrowawayPostgres:
        auth = ["--auth=trust"]
        if self.password is not None:
            pwfile = self.root / "pw"
            pwfile.write_text(self.password + "\n")
            if self._as_user:
                user = pwd.getpwnam("postgres")
                os.chown(pwfile, user.pw_uid, user.pw_gid)
            auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "--no-sync", *auth
        )
        if self.ssl:
            self._make_certificate()
        self.resume()
        return self

    def _make_certificate(self) -> None:
        """A self-signed server certificate; ``self.ca`` is what a client must trust."""
        key, cert = self.data / "server.key", self.data / "server.crt"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.ca = self.root / "ca.crt"
        shutil.copy(cert, self.ca)
        os.chmod(key, 0o600)
        if self._as_user:
            user = pwd.getpwnam("postgres")
            for path in (key, cert):
                os.chown(path, user.pw_uid, user.pw_gid)
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")

    def resume(self) -> None:
        """Start (or restart after :meth:`stop`) the server and wait until it accepts."""
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=200"
        )
        options += "".join(f" -c {k}={v}" for k, v in self.settings.items())
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        pw = self.password if password is None else password
        auth = f"postgres:{pw}@" if pw is not None else "postgres@"
        return f"postgresql://{auth}127.0.0.1:{self.port}/{database}"

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"PostgreSQL on port {self.port} did not come up")
