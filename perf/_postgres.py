"""A throwaway local PostgreSQL server for the benchmark peers (perf only).

``throwaway_server(parent)`` runs ``initdb`` in a new temporary directory under ``parent``,
starts ``postgres`` on 127.0.0.1 at a free port with ``fsync=on`` and ``synchronous_commit=on``
(the defaults, stated anyway) and everything else at its defaults, yields a DSN, and on the
way out (normal exit, error, Ctrl-C, SIGTERM) stops the server and deletes the directory. The
server runs in its own session, so a Ctrl-C reaches only the benchmark, which then stops it;
it is also told to quit if the benchmark process dies without cleaning up (Linux).

PostgreSQL refuses to run as root; as root, the server runs as the ``postgres`` user if there
is one, else as ``nobody``. When that cannot work (no binaries, no such user, a directory the
user cannot reach), :class:`Unavailable` says why, and the benchmark skips the row.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

BINARIES = ("initdb", "postgres")
DATABASE_USER = "bench"
_PR_SET_PDEATHSIG = 1


class Unavailable(Exception):
    """Raised when no local PostgreSQL server can be started; the message says why."""


def find_binaries() -> dict[str, str]:
    """Paths of initdb and postgres (PATH, then the Debian layout); raise Unavailable."""
    found: dict[str, str] = {}
    for name in BINARIES:
        path = shutil.which(name)
        if path is None:
            debian = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
            path = str(debian[-1]) if debian else None
        if path is None:
            raise Unavailable(f"no `{name}` binary on PATH or in /usr/lib/postgresql/*/bin")
        found[name] = path
    return found


def server_version(postgres: str) -> str:
    """The server's version, from ``postgres --version``: e.g. ``15.18 (Debian 15.18-0)``."""
    out = subprocess.run([postgres, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().removeprefix("postgres (PostgreSQL) ")


def _server_user() -> pwd.struct_passwd | None:
    """The account to run the server as: None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise Unavailable("running as root and there is no `postgres` or `nobody` user to run as")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child, after the user switch: SIGQUIT (immediate shutdown) if we die first."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT, 0, 0, 0)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Fast shutdown (SIGINT), then immediate (SIGQUIT), then SIGKILL."""
    for sig, wait in ((signal.SIGINT, 15.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)


def _tail(path: Path, lines: int = 3) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    return ""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so that ``finally`` blocks (our clean-up) run."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous: Callable[[int, FrameType | None], object] | int | None = None
    with contextlib.suppress(ValueError):  # not the main thread: leave it alone
        previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def throwaway_server(parent: str | None = None, max_connections: int = 100) -> Iterator[str]:
    """Yield the DSN of a fresh local server; stop it and delete its files afterwards.

    Raises Unavailable (with the reason) when it cannot be started.
    """
    binaries = find_binaries()
    user = _server_user()
    top = Path(tempfile.mkdtemp(prefix="bench-pgserver-", dir=parent))
    proc: subprocess.Popen[bytes] | None = None
    uid: int | None = None
    gid: int | None = None
    groups: list[int] | None = None
    if user is not None:
        uid, gid, groups = user.pw_uid, user.pw_gid, []
        os.chown(top, uid, gid)
    data = top / "data"
    log = top / "server.log"
    try:
        with _sigterm_raises():
            init = subprocess.run(
                [
                    *(binaries["initdb"], "-D", str(data), "-U", DATABASE_USER),
                    *("--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"),
                ],
                capture_output=True,
                text=True,
                check=False,
                cwd=top,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
            if init.returncode != 0:
                who = f" as {user.pw_name}" if user else ""
                last = (init.stderr or init.stdout).strip().splitlines()[-1:]
                hint = (
                    f" (the server runs as {user.pw_name}: every directory above {top} must be"
                    " searchable by that user; try --dir under /tmp)"
                    if user
                    else ""
                )
                raise Unavailable(f"initdb{who} failed in {top}: {' '.join(last)}{hint}")
            port = _free_port()
            settings = {
                "listen_addresses": "127.0.0.1",
                "port": str(port),
                "unix_socket_directories": str(top),
                "max_connections": str(max_connections),
                "fsync": "on",
                "synchronous_commit": "on",
            }
            args = [binaries["postgres"], "-D", str(data)]
            for key, value in settings.items():
                args += ["-c", f"{key}={value}"]
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=top,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,  # runs after the user switch
                    user=uid,
                    group=gid,
                    extra_groups=groups,
                )
            _wait_ready(proc, data / "postmaster.pid", log)
            yield f"postgresql://{DATABASE_USER}@127.0.0.1:{port}/postgres"
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(top, ignore_errors=True)


def _wait_ready(proc: subprocess.Popen[bytes], pidfile: Path, log: Path) -> None:
    """Wait until postmaster.pid says "ready" (as ``pg_ctl -w`` does)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"postgres exited with {proc.returncode}: {_tail(log)}")
        with contextlib.suppress(OSError):
            lines = pidfile.read_text().splitlines()
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return
        time.sleep(0.02)
    raise Unavailable(f"postgres not ready after 60 s: {_tail(log)}")
