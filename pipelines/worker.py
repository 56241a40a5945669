"""The worker processes of a multi-process local run (--direct_running_mode multi_processing).

A worker is Beam's SDK harness (`apache_beam.runners.worker.sdk_worker_main`), which the runner starts with a
shell command and the control address in its environment. Two things are ours:

- Standbys. Starting a worker the plain way means a new Python process importing Beam (~2 s here), and the
  runner starts its workers only once the pipeline is built, so every multi-process run waited for it. The
  command-line entry (`python -m pipelines.export`, `ctexport`) instead forks its workers as soon as it has
  imported Beam and our transforms (`standby_workers`). When the runner then runs the worker command
  (`python -m pipelines.worker --standby SOCKET`), that short-lived process connects to the socket, hands its
  environment to a standby, waits for the standby's exit status and exits with it. With no standby to take
  it (none started, or none answering), it runs the harness itself.
- A quick exit. Once the harness is done the process exits at once. The runner stops its workers one after
  the other, and a Python process with gRPC and Beam loaded takes about 0.6 s to tear itself down.

Standbys are forked only on Linux and only from a process with a single thread that has not started a
runner yet (gRPC must not be running when a process forks), which is what the command-line entry is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator

log = logging.getLogger("ctexport")
STANDBY_FLAG = "--standby"
_READY = b"R"
READY_TIMEOUT = 10.0  # seconds a worker waits for a standby to answer before it runs the harness itself
_RUNNER = "apache_beam.runners.portability.fn_api_runner"  # imported: a runner may have started gRPC
REAP_TIMEOUT = 10.0  # seconds the entry waits for its standbys to end before it kills them


def main() -> None:
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == STANDBY_FLAG:
        status = _hand_over(args[1])
        if status is not None:
            os._exit(status)
    _exit_after_harness()


def _exit_after_harness() -> None:
    status = 1
    try:
        status = _harness_status()
    finally:
        # Every bundle is finished (files closed, results sent) before the runner lets a worker go.
        os._exit(status)


def _harness_status() -> int:
    """Run the harness: 0 when it ends well, 1 when it fails. Output is flushed either way."""
    status = 0
    try:
        _harness()
    except BaseException:  # the harness has logged it to the runner; show it here too, as Python would
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return status


def _harness() -> None:
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(sys.argv)


def _hand_over(path: str) -> int | None:
    """Let a standby be this worker: its exit status, or None when no standby took the work."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(READY_TIMEOUT)
        conn.connect(path)
        if conn.recv(1) != _READY:
            return None
    except OSError:  # no socket, nobody listening, or no answer in time
        conn.close()
        return None
    # From here the standby may be running the harness: never run a second one.
    try:
        conn.settimeout(None)
        conn.sendall(json.dumps(dict(os.environ)).encode())
        conn.shutdown(socket.SHUT_WR)
        status = conn.recv(1)
    except OSError:
        status = b""
    finally:
        conn.close()
    if not status:
        print("ctexport worker: the standby process ended without a status", file=sys.stderr)
        return 1
    return status[0]


@contextlib.contextmanager
def standby_workers(count: int) -> Iterator[str | None]:
    """Fork `count` copies of this process that wait to become the run's workers; yields the worker command
    for the runner, or None when this process cannot fork safely. On exit, standbys not taken end."""
    if count < 1 or sys.platform != "linux" or threading.active_count() > 1 or _RUNNER in sys.modules:
        yield None
        return
    from apache_beam.runners.worker import sdk_worker_main  # noqa: F401  (imported once, for every standby)

    folder = tempfile.mkdtemp(prefix="ctexport-workers-")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    children: list[tuple[int, int]] = []  # (pid, the write end of the pipe it watches)
    try:
        path = os.path.join(folder, "socket")
        try:
            listener.bind(path)  # a socket path is limited to 107 bytes
            listener.listen(count)
            for _ in range(count):
                children.append(_fork_standby(listener, children))
        except OSError as e:  # the workers start the plain way
            log.debug("no standby workers: %s", e)
            path = None
        listener.close()
        yield (
            None
            if path is None
            else f"{shlex.quote(sys.executable)} -m pipelines.worker {STANDBY_FLAG} {shlex.quote(path)}"
        )
    finally:
        listener.close()
        for _, keep in children:
            os.close(keep)  # a standby nobody took sees the end of its pipe and exits
        _reap([pid for pid, _ in children])
        shutil.rmtree(folder, ignore_errors=True)


def _fork_standby(listener: socket.socket, siblings: list[tuple[int, int]]) -> tuple[int, int]:
    watch, keep = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError:
        os.close(watch)
        os.close(keep)
        raise
    if pid == 0:  # the standby: it never returns from here
        os.close(keep)
        for _, other in siblings:
            os.close(other)
        _standby(listener, watch)
    os.close(watch)
    return pid, keep


def _standby(listener: socket.socket, watch: int) -> None:
    status = 1
    try:
        conn = _claim(listener, watch)
        if conn is None:  # the run is over without us
            status = 0
            return
        with conn:
            try:
                conn.sendall(_READY)
                env = _read_all(conn)
            except OSError:
                env = b""
            if not env:  # the worker gave up waiting and runs the harness itself
                status = 0
                return
            os.environ.clear()
            os.environ.update(json.loads(env))
            status = _harness_status()
            with contextlib.suppress(OSError):  # the worker process may be gone (the runner stopped it)
                conn.sendall(bytes([status]))
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)


def _claim(listener: socket.socket, watch: int) -> socket.socket | None:
    """Wait for a worker to connect (None when the entry closes the pipe first)."""
    listener.setblocking(False)
    while True:
        ready, _, _ = select.select([listener, watch], [], [])
        if watch in ready:
            return None
        try:
            conn, _ = listener.accept()
        except BlockingIOError:  # another standby took it
            continue
        listener.close()
        os.close(watch)
        conn.setblocking(True)
        return conn


def _read_all(conn: socket.socket) -> bytes:
    parts = []
    while chunk := conn.recv(1 << 16):
        parts.append(chunk)
    return b"".join(parts)


def _reap(pids: list[int]) -> None:
    deadline = time.monotonic() + REAP_TIMEOUT
    waiting = set(pids)
    while waiting:
        for pid in list(waiting):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            waiting.discard(pid)
        if not waiting:
            return
        if time.monotonic() > deadline:
            for pid in waiting:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            return
        time.sleep(0.02)


if __name__ == "__main__":
    main()
