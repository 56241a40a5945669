"""Export requests and their runs: which windows are due, claiming a run so it runs once, running it through
the pipeline with a fixed run timestamp, and recording the real outcome.

A run is `runs/<request id>/<run timestamp>.json` in the state store (ctexport/state.py). Claiming it is a
conditional write: creating the object, or updating it from the version just read, so of two processes
only one wins. The claimant records itself as `owner` with a lease (`lease_until`) that a heartbeat thread
renews while the export runs. A run left `Running` by a process that died is taken over once its lease has
expired, with the same run timestamp, so the retry rewrites the same objects and the pipeline deletes what the
failed attempt left (SPEC sections 2 and 5). A run is `Done` only once its manifest exists; a manifest found
when a run is resumed means an earlier attempt completed, and the run is recorded `Done` without re-running.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import secrets
import socket
import sys
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import orjson

from ctexport import state
from transforms import naming, storage
from transforms.windows import export_window, format_run_timestamp, iso, parse_run_timestamp, parse_time

log = logging.getLogger("ctexport")

PENDING, RUNNING, DONE, FAILED, STOPPED = "Pending", "Running", "Done", "Failed", "Stopped"
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_]+$")  # SPEC section 2, as pipelines/options.py checks it
LEASE_SECONDS = 600
MAX_ATTEMPTS = 3

Clock = Callable[[], float]
# (request, run timestamp, now) -> (exit status of the pipeline, the line saying why it failed or None)
Runner = Callable[[dict, str, float], tuple[int, str | None]]


def new_request_id(now: float) -> str:
    """Letters, digits and `_` (SPEC): creation time in epoch seconds, then a random suffix."""
    return f"{int(now)}_{secrets.token_hex(3)}"


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# ---- requests -----------------------------------------------------------------------------------------------


def period_seconds(req: dict) -> int:
    return int(req["every_hours"]) * 3600


def is_recurring(req: dict) -> bool:
    return req["frequency"] == "recurring"


def request_status(req: dict, runs: list[dict]) -> str:
    """SPEC section 5: a recurring request is Pending while active and Stopped after; a one-time request has
    the status of its run (Pending until the run is recorded)."""
    if is_recurring(req):
        return STOPPED if req.get("stopped") else PENDING
    mine = [r for r in runs if r.get("run_timestamp") == req.get("run_timestamp")]
    return mine[0]["status"] if mine else PENDING


def run_window(req: dict, run_ts: str) -> dict:
    """The window of the run at `run_ts`: {"field", "start", "end"} with ISO times (field None: all records)."""
    start = parse_time(req["start"]) if req.get("start") else None
    end = parse_time(req["end"]) if req.get("end") else None
    w = export_window(
        req["export_type"], req["frequency"], parse_run_timestamp(run_ts), start, end, req.get("every_hours")
    )
    return w.as_dict()


def due_run_timestamps(req: dict, now: float) -> list[str]:
    """Run timestamps to consider at `now`, oldest first. Recurring: every T on the period grid from the first
    window (or after `done_through`) with T <= now - settle; none once stopped. One-time: its one run."""
    if not is_recurring(req):
        return [req["run_timestamp"]]
    if req.get("stopped"):
        return []
    period = period_seconds(req)
    first = parse_run_timestamp(req["first_run_timestamp"])
    if req.get("done_through"):
        first = max(first, parse_run_timestamp(req["done_through"]) + period)
    last = int(now) - int(req.get("settle_minutes", 15)) * 60
    return [format_run_timestamp(t) for t in range(first, last + 1, period)]


def pipeline_argv(req: dict, run_ts: str) -> list[str]:
    """The flags of pipelines/options.py for one run of `req` at `run_ts`."""
    argv = [
        "--source", req["source"],
        "--export_type", req["export_type"],
        "--frequency", req["frequency"],
        "--format", req["format"],
        "--output", req["output"],
        "--request_id", req["request_id"],
        "--database_id", req["database_id"],
        "--run_timestamp", run_ts,
        "--timezone", req.get("timezone") or "UTC",
        "--json_header", "true" if req.get("json_header", True) else "false",
        "--csv_formula_guard", "true" if req.get("csv_formula_guard") else "false",
    ]  # fmt: skip
    optional = {
        "--compression": req.get("compression"),
        "--source_format": req.get("source_format"),
        "--max_file_bytes": req.get("max_file_bytes"),
        "--max_bad_records": req.get("max_bad_records"),
    }
    if req.get("events"):
        optional["--events"] = orjson.dumps(req["events"]).decode()  # a JSON array: names may hold commas
    if is_recurring(req):
        optional["--every_hours"] = req["every_hours"]
        optional["--settle_minutes"] = req.get("settle_minutes", 15)
    elif req["export_type"] == "events":
        optional["--start"] = format_run_timestamp(parse_time(req["start"]))
        optional["--end"] = format_run_timestamp(parse_time(req["end"]))
    for flag, value in optional.items():
        if value is not None:
            argv += [flag, str(value)]
    return argv


def output_location(url: str) -> str:
    """The output location as compared by the profile rule: gs://bucket[/prefix] or an absolute folder."""
    if storage.is_gcs(url):
        bucket, path = storage.split_gcs_url(url.rstrip("/"))
        return f"gs://{bucket}" + (f"/{path.strip('/')}" if path.strip("/") else "")
    return os.path.abspath(os.path.expanduser(url)).rstrip("/") or "/"


# ---- reading the state --------------------------------------------------------------------------------------


def read_requests(store: state.StateStore) -> list[dict]:
    names = store.list("requests/")
    docs = _read_many(store, names)
    return [d.data for d in docs if d is not None]


def read_runs(store: state.StateStore, request_id: str) -> list[dict]:
    names = store.list(state.runs_prefix(request_id))
    runs = [d.data for d in _read_many(store, names) if d is not None]
    return sorted(runs, key=lambda r: r["run_timestamp"])


def _read_many(store: state.StateStore, names: list[str]) -> list[state.Doc | None]:
    if len(names) <= 1 or isinstance(store, state.LocalState):
        return [store.get(n) for n in names]
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(store.get, names))


def get_request(store: state.StateStore, request_id: str) -> dict | None:
    if not REQUEST_ID_RE.match(request_id):
        return None
    doc = store.get(state.request_name(request_id))
    return doc.data if doc else None


# ---- claiming and finishing a run ---------------------------------------------------------------------------


def new_run(req: dict, run_ts: str, now: float) -> dict:
    return {
        "request_id": req["request_id"],
        "run_timestamp": run_ts,
        "window": run_window(req, run_ts),
        "status": PENDING,
        "created": iso(int(now)),
        "updated": iso(int(now)),
        "owner": None,
        "lease_until": None,
        "attempts": [],
        "manifest": None,
        "files": [],
        "errors": [],
        "file_count": 0,
        "records": 0,
        "bad": 0,
        "bytes": 0,
        "error": None,
    }


def _start_attempt(data: dict, owner: str, now: float, lease_seconds: int) -> dict:
    data = dict(data)
    attempts = [dict(a) for a in data.get("attempts", [])]
    if data["status"] == RUNNING and attempts:  # taking over after the lease expired
        prev = attempts[-1]
        prev["status"] = FAILED
        prev["ended"] = iso(int(now))
        prev["error"] = (
            f"abandoned: {prev.get('owner')} stopped renewing its lease (expired "
            f"{iso(int(data.get('lease_until') or now))}); resumed with the same run timestamp"
        )
    attempts.append(
        {"number": len(attempts) + 1, "owner": owner, "started": iso(int(now)), "status": RUNNING}
    )
    data.update(
        status=RUNNING,
        owner=owner,
        lease_until=int(now) + lease_seconds,
        heartbeat=iso(int(now)),
        updated=iso(int(now)),
        attempts=attempts,
    )
    return data


@dataclass
class Claim:
    """A run this process owns: its lease is renewed by a heartbeat thread until `finish`."""

    store: state.StateStore
    name: str
    doc: state.Doc
    owner: str
    clock: Clock
    lease_seconds: int
    lost: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def run_ts(self) -> str:
        return self.doc.data["run_timestamp"]

    def start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.name}", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _beat(self) -> None:
        interval = max(1.0, self.lease_seconds / 5)
        while not self._stop.wait(interval):
            try:
                with self._lock:
                    if not self._renew():
                        return
            except Exception as e:  # a missed beat is not fatal: the lease has room for several
                log.warning("renewing the lease of %s failed: %s", self.name, e)

    def _renew(self) -> bool:
        while True:
            data = dict(self.doc.data)
            data["lease_until"] = int(self.clock()) + self.lease_seconds
            data["heartbeat"] = iso(int(self.clock()))
            stored = self.store.update(self.name, data, self.doc.version)
            if stored is not None:
                self.doc = stored
                return True
            if not self._refresh():
                return False

    def _refresh(self) -> bool:
        """Re-read after a lost race; False (and `lost`) when another process owns the run now."""
        current = self.store.get(self.name)
        if current is None or current.data.get("owner") != self.owner:
            self.lost = True
            return False
        self.doc = current
        return True

    def finish(self, status: str, **fields) -> bool:
        """Record the outcome; False when another process took the run over meanwhile (its record stands)."""
        self.stop_heartbeat()
        now = int(self.clock())
        with self._lock:
            while not self.lost:
                data = dict(self.doc.data)
                attempts = [dict(a) for a in data["attempts"]]
                attempts[-1].update(status=status, ended=iso(now), error=fields.get("error"))
                data.update(fields, status=status, owner=None, lease_until=None, updated=iso(now))
                data["attempts"] = attempts
                stored = self.store.update(self.name, data, self.doc.version)
                if stored is not None:
                    self.doc = stored
                    return True
                self._refresh()
        return False


def claim_run(
    store: state.StateStore,
    req: dict,
    run_ts: str,
    *,
    owner: str,
    clock: Clock,
    lease_seconds: int = LEASE_SECONDS,
    max_attempts: int = MAX_ATTEMPTS,
) -> Claim | None:
    """Take the run for this process, or None: Done, running elsewhere under a live lease, out of attempts,
    or another process won the race."""
    name = state.run_name(req["request_id"], run_ts)
    now = clock()
    doc = store.get(name)
    if doc is None:
        fresh = _start_attempt(new_run(req, run_ts, now), owner, now, lease_seconds)
        created = store.create(name, fresh)
        if created is not None:
            return Claim(store, name, created, owner, clock, lease_seconds)
        doc = store.get(name)
        if doc is None:
            return None
    d = doc.data
    if d["status"] == DONE:
        return None
    if d["status"] == RUNNING and (d.get("lease_until") or 0) > now:
        return None
    if d["status"] == FAILED and len(d.get("attempts", [])) >= max_attempts:
        return None
    stored = store.update(name, _start_attempt(d, owner, now, lease_seconds), doc.version)
    return Claim(store, name, stored, owner, clock, lease_seconds) if stored is not None else None


# ---- running ------------------------------------------------------------------------------------------------


class _Tee(io.TextIOBase):
    """Passes writes through to a stream and keeps them while `keep` is set (the pipeline's error line)."""

    def __init__(self, target):
        self.target = target
        self.keep = True
        self.parts: list[str] = []

    def write(self, s: str) -> int:
        if self.keep:
            self.parts.append(s)
        return self.target.write(s)

    def flush(self) -> None:
        self.target.flush()

    def text(self) -> str:
        return "".join(self.parts)


def error_line(text: str, status: int) -> str:
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    for prefix in ("run failed:", "invalid request:"):
        found = [x for x in lines if x.startswith(prefix)]
        if found:
            return "; ".join(found)[:1000]
    return (lines[-1] if lines else f"the export ended with exit status {status}")[:1000]


@contextlib.contextmanager
def run_credentials(key_file: str | None):
    """While a run writes to a destination saved with a key file, that key is the process's Application
    Default Credentials (GOOGLE_APPLICATION_CREDENTIALS): the path is passed on, never the content."""
    if not key_file:
        yield
        return
    if not os.path.isfile(key_file):
        raise FileNotFoundError(
            f"key file {key_file} of the destination is missing: restore it, or save the destination again "
            "with `ctexport destinations add --replace`"
        )
    saved = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = key_file
    _forget_gcs_client()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
        else:
            os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = saved
        _forget_gcs_client()


def _forget_gcs_client() -> None:
    """Drop the process's cached GCS client (transforms/storage.py) so the next one reads the credentials
    anew. A state store keeps the client it was built with."""
    cached = getattr(storage, "_client_for", None)
    if cached is not None and hasattr(cached, "cache_clear"):
        cached.cache_clear()


def export_runner(req: dict, run_ts: str, now: float) -> tuple[int, str | None]:
    """Run the export in this process (pipelines/export.py) with the run timestamp fixed."""
    from pipelines import export

    tee = _Tee(sys.stderr)
    try:
        with run_credentials(req.get("key_file")), contextlib.redirect_stderr(tee):
            status = export.run(pipeline_argv(req, run_ts), now=now)
    except FileNotFoundError as e:
        return 1, str(e)
    finally:
        tee.keep = False
    return status, (None if status == 0 else error_line(tee.text(), status))


def read_manifest(req: dict, run_ts: str) -> tuple[dict | None, str]:
    out = storage.open_storage(req["output"])
    name = naming.manifest_name(req["request_id"], run_ts)
    url = out.display(name)
    with run_credentials(req.get("key_file")):
        if not out.exists(name):
            return None, url
        return orjson.loads(out.read_bytes(name)), url


def _counts(manifest: dict, url: str) -> dict:
    t = manifest["totals"]
    return {
        "manifest": url,
        "files": [f["name"] for f in manifest["files"]],
        "errors": [e["name"] for e in manifest.get("errors", [])],
        "file_count": t["files"],
        "records": t["exported"],
        "bad": t["bad"],
        "bytes": t["bytes"],
        "error": None,
    }


def perform(claim: Claim, req: dict, runner: Runner, clock: Clock) -> dict:
    """Run a claimed run to its outcome and record it; returns the run as recorded."""
    run_ts = claim.run_ts
    try:
        manifest, url = read_manifest(req, run_ts)  # an earlier attempt may have completed before dying
    except Exception as e:
        manifest, url = None, ""
        log.debug("reading the manifest failed before the run: %s", e)
    status, error = 0, None
    if manifest is None:
        claim.start_heartbeat()
        try:
            status, error = runner(req, run_ts, clock())
        except KeyboardInterrupt:
            claim.finish(FAILED, error="interrupted; the next tick resumes this run")
            raise
        except Exception as e:
            status, error = 1, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        finally:
            claim.stop_heartbeat()
        try:
            manifest, url = read_manifest(req, run_ts)
        except Exception as e:
            manifest, error = None, error or f"reading the manifest failed: {type(e).__name__}: {e}"
    if manifest is not None:
        claim.finish(DONE, **_counts(manifest, url))
    else:
        if status == 0:
            error = "the export ended without writing its manifest, so the run is not complete"
        claim.finish(FAILED, error=error or f"the export ended with exit status {status}", exit_status=status)
    return claim.doc.data


def describe_run(run: dict) -> str:
    if run["status"] == DONE:
        return f"Done: {run['file_count']:,} files, {run['records']:,} records, {run['bad']:,} bad"
    return f"{run['status']}: {run.get('error') or ''}".rstrip(": ")


# ---- tick ---------------------------------------------------------------------------------------------------


@dataclass
class TickReport:
    done: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # running elsewhere, done, out of attempts


def tick(
    store: state.StateStore,
    clock: Clock,
    *,
    runner: Runner | None = None,
    request_ids: list[str] | None = None,
    max_attempts: int = MAX_ATTEMPTS,
    lease_seconds: int = LEASE_SECONDS,
    owner: str | None = None,
    say: Callable[[str], None] = print,
) -> TickReport:
    """Run every due window of every active recurring request (and resume unfinished one-time runs), oldest
    first, each claimed before it runs so that no window runs twice."""
    owner = owner or new_owner()
    runner = runner or export_runner
    now = clock()
    report = TickReport()
    jobs = []
    for req in read_requests(store):
        if request_ids and req["request_id"] not in request_ids:
            continue
        if not is_recurring(req) and _one_time_settled(store, req, max_attempts):
            continue
        for ts in due_run_timestamps(req, now):
            jobs.append((ts, req["created"], req["request_id"]))
    for run_ts, _, request_id in sorted(jobs):
        req = get_request(store, request_id)  # again: it may have been stopped meanwhile
        if req is None or (is_recurring(req) and req.get("stopped")):
            continue
        claim = claim_run(
            store,
            req,
            run_ts,
            owner=owner,
            clock=clock,
            lease_seconds=lease_seconds,
            max_attempts=max_attempts,
        )
        if claim is None:
            report.skipped.append((request_id, run_ts))
            continue
        say(f"request {request_id} run {run_ts} ({window_text(claim.doc.data['window'])}): running")
        run = perform(claim, req, runner, clock)
        if claim.lost:
            say(f"request {request_id} run {run_ts}: another process took it over; its outcome stands")
            report.skipped.append((request_id, run_ts))
            continue
        (report.done if run["status"] == DONE else report.failed).append((request_id, run_ts))
        say(f"request {request_id} run {run_ts}: {describe_run(run)}")
    for req in read_requests(store):
        if is_recurring(req) and (not request_ids or req["request_id"] in request_ids):
            advance_done_through(store, req)
    return report


def _one_time_settled(store: state.StateStore, req: dict, max_attempts: int) -> bool:
    doc = store.get(state.run_name(req["request_id"], req["run_timestamp"]))
    if doc is None:
        return False
    d = doc.data
    return d["status"] == DONE or (d["status"] == FAILED and len(d.get("attempts", [])) >= max_attempts)


def advance_done_through(store: state.StateStore, req: dict) -> None:
    """Move the request's `done_through` mark over consecutive Done runs, so a tick reads only newer runs.
    Only a cache: claiming never depends on it."""
    period = period_seconds(req)
    t = parse_run_timestamp(req["first_run_timestamp"])
    if req.get("done_through"):
        t = parse_run_timestamp(req["done_through"]) + period
    last = None
    while True:
        doc = store.get(state.run_name(req["request_id"], format_run_timestamp(t)))
        if doc is None or doc.data["status"] != DONE:
            break
        last = format_run_timestamp(t)
        t += period
    if last is None:
        return

    def change(data: dict) -> dict | None:
        if data.get("done_through") and data["done_through"] >= last:
            return None
        data["done_through"] = last
        return data

    store.modify(state.request_name(req["request_id"]), change)


def window_text(w: dict | None) -> str:
    if not w or w.get("field") is None:
        return "all records"

    def short(t: str) -> str:
        return t.replace("T", " ")[:16]

    return f"{w['field']} in [{short(w['start'])}, {short(w['end'])})"
