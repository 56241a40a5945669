"""The export job: `python -m pipelines.export --flag value ...` with the flags of SPEC section 2.

Exit status: 0 done, 1 the run failed, 2 the request was invalid (nothing read, nothing written).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shlex
import sys
import tempfile
import time
import uuid
from typing import NoReturn

import apache_beam as beam
import orjson
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipelines import worker
from pipelines.options import ExportOptions, InvalidRequest, Request, unknown_flags, validate
from transforms import naming, storage
from transforms.finalize import RUN_FAILED, Finalize
from transforms.pool import pool_folder
from transforms.runs import SPILL_DIR, delete_runs, delete_stale_runs
from transforms.series import ExtractSeries
from transforms.sources import RANGE_BYTES, plan_reads
from transforms.write import SHARD_BYTES, WriteSeries

log = logging.getLogger("ctexport")
DEBUG_ENV = "CTEXPORT_DEBUG"
SHARD_BYTES_ENV = "CTEXPORT_SHARD_BYTES"  # tuning: the data size above which a series is written in shards


def build_pipeline(
    p: beam.Pipeline,
    request: Request,
    files: list[storage.SourceFile],
    spill: str | None = None,
    range_bytes: int = RANGE_BYTES,
    shard_bytes: int = SHARD_BYTES,
    workers: int | None = None,
):
    """Add the export to `p`; returns the PCollection holding the run's manifest (one dict).

    spill: where the sorted runs go (default: a fresh folder under the temp location, see `spill_location`).
    shard_bytes: an events series with more data than this is written in shards (JSON and XML).
    workers: `worker_count` of the options as given (default: of `p.options`; `make_runner` changes them).
    """
    if spill is None:
        spill = spill_location(p.options, request)[1]
    if workers is None:
        workers = worker_count(p.options)
    replays = p.options.view_as(DirectOptions).direct_runner_bundle_repeat
    tasks = plan_reads(files, request.source_format, range_bytes)
    file_order = {f.url: i for i, f in enumerate(files)}
    budget = event_name_budget(request)
    parsed = (
        p
        | "ReadTasks" >> beam.Create(list(range(len(tasks))), reshuffle=False)  # SpreadTasks does it
        | "SpreadTasks" >> beam.Reshuffle()
        | "ExtractSeries"
        >> ExtractSeries(
            request, tasks, file_order, budget, spill, pool_folder(spill, "read", workers, replays)
        )
    )
    written = (
        parsed.series
        | "GroupBySeries" >> beam.GroupByKey()
        | "WriteSeries"
        >> WriteSeries(
            request,
            tasks,
            file_order,
            spill,
            shard_bytes,
            workers=workers,
            pool=pool_folder(spill, "write", workers, replays),
        )
    )
    dead = (parsed.dead_letters, written.dead_letters) | "AllDeadLetters" >> beam.Flatten()
    stats = (parsed.stats, written.stats) | "AllStats" >> beam.Flatten()
    sources = [{"file": f.url, "bytes": f.size} for f in files]
    return (written.files, dead, stats) | "Finalize" >> Finalize(request, sources, spill, len(tasks))


def event_name_budget(request: Request) -> int:
    """The bytes an event name may take in this request's object names (`naming.event_name_budget`)."""
    return naming.event_name_budget(
        request.request_id,
        request.database_id,
        request.ext,
        storage.open_storage(request.output).name_budget(),
    )


def spill_location(options: PipelineOptions, request: Request) -> tuple[str, str]:
    """(temp root, spill folder) for the sorted runs: under --temp_location when set (Dataflow needs a gs://
    one), else the local temporary folder; a fresh folder per launch. Finalize removes it."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    temp = (options.view_as(GoogleCloudOptions).temp_location or tempfile.gettempdir()).rstrip("/")
    name = f"{naming.run_prefix(request.request_id, request.run_ts)}{uuid.uuid4().hex[:12]}"
    return temp, f"{temp}/{SPILL_DIR}/{name}"


def _local(options: PipelineOptions) -> bool:
    """Whether the run is the DirectRunner's (with no --runner, unless the flex template launcher builds it)."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    std = options.view_as(StandardOptions)
    if std.runner is None and options.view_as(GoogleCloudOptions).template_location:
        return False
    return std.runner in (None, "DirectRunner", "direct")


def local_workers(argv: list[str]) -> int:
    """`worker_count` of these flags; 0 when they do not parse."""
    if "-h" in argv or "--help" in argv:
        return 0
    handlers = logging.root.handlers[:]
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # bad flags: `run` says what is wrong, once
            return worker_count(PipelineOptions(argv))
    except (Exception, SystemExit):
        return 0
    finally:
        # Beam may log while parsing, which gives the root logger a handler on the discarded stream.
        logging.root.handlers[:] = handlers


def worker_count(options: PipelineOptions) -> int:
    """How many worker processes a multi-process local run with these options starts; 0 for any other run."""
    if not _local(options):
        return 0
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode != "multi_processing":
        return 0
    # As the FnApiRunner counts them: 0 means one per core.
    return (os.cpu_count() or 1) if direct.direct_num_workers == 0 else (direct.direct_num_workers or 1)


def make_runner(options: PipelineOptions, worker_command: str | None = None):
    """The runner to use. For the DirectRunner, Beam's in-process FnApiRunner straight away: Beam 2.77's
    DirectRunner first tries Prism, which downloads a binary (and fails offline) before falling back to it.
    Multi-process running (--direct_num_workers N --direct_running_mode multi_processing) is the FnApiRunner's,
    with `pipelines.worker` as the worker process (`worker_command`: the one `standby_workers` gave).
    """
    std = options.view_as(StandardOptions)
    if not _local(options):
        if std.runner is None:
            std.runner = "DataflowRunner"  # the flex template launcher builds the job for Dataflow
        return None  # else Beam resolves it from --runner
    std.runner = "DirectRunner"
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle
    from apache_beam.transforms.environments import SubprocessSDKEnvironment

    environment = None
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode == "multi_processing":
        # The FnApiRunner would start its own worker command for this mode; with no mode set it keeps the
        # environment given here, and still runs --direct_num_workers workers.
        direct.direct_running_mode = None
        command = worker_command or f"{shlex.quote(sys.executable)} -m pipelines.worker"  # run by a shell
        log.debug("local workers: %s", command)
        environment = SubprocessSDKEnvironment.from_command_string(command)
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(default_environment=environment, provision_info=info)


def summary(manifest: dict, seconds: float) -> str:
    t = manifest["totals"]
    lines = [
        f"Done: request {manifest['request_id']} run {manifest['run_timestamp']} "
        f"({manifest['window'] and _window_text(manifest['window'])})",
        f"  records read {t['records_read']:,}; exported {t['exported']:,}; bad {t['bad']:,}"
        + (f" ({t['unplaced']:,} unplaced)" if t["unplaced"] else "")
        + f"; outside this export {t['out_of_scope']:,}"
        + (
            f"; older profile versions {t['superseded_profile_versions']:,}"
            if t["superseded_profile_versions"]
            else ""
        ),
        f"  files {t['files']:,}, {t['bytes']:,} bytes, in {seconds:.1f} s",
    ]
    per = manifest["records_per_event_and_date"]
    if per:
        lines.append("  records per event and date:")
        for event, days in per.items():
            lines.append(f"    {event}: " + ", ".join(f"{d} {n:,}" for d, n in days.items()))
    if manifest["bad_records_by_reason"]:
        lines.append(
            "  bad records by reason: "
            + ", ".join(f"{k} {v:,}" for k, v in manifest["bad_records_by_reason"].items())
        )
    if manifest["xml_replaced_chars"]:
        lines.append(f"  XML-forbidden characters replaced: {manifest['xml_replaced_chars']:,}")
    return "\n".join(lines)


def _window_text(w: dict) -> str:
    return "all records" if w["field"] is None else f"{w['field']} in [{w['start']}, {w['end']})"


def run(argv: list[str] | None = None, now: float | None = None, worker_command: str | None = None) -> int:
    """Validate, build, run, report. Returns the exit status: 0 done, 1 failed, 2 invalid request."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(usage())
        return 0
    _setup_logging()
    try:
        return _run(argv, now, worker_command)
    except Exception as e:  # storage faults past their retries, while validating or reading the manifest
        log.debug("run failed", exc_info=True)
        print(f"run failed: {_one_line(e)}", file=sys.stderr)
        return 1


def _one_line(e: BaseException) -> str:
    message = str(e)
    if RUN_FAILED in message:
        return message[message.index(RUN_FAILED) :].split("\n")[0]
    first = message.strip().splitlines()[0] if message.strip() else ""
    hint = "" if os.environ.get(DEBUG_ENV) else f" (set {DEBUG_ENV}=1 for the full trace)"
    return f"{type(e).__name__}: {first}{hint}"


def run_process(argv: list[str] | None = None) -> int:
    """`run` for a process that runs one export and ends (`python -m pipelines.export`, `ctexport export`).
    A multi-process local run forks its workers first, so that they are ready when the runner wants them
    (`pipelines.worker.standby_workers`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with worker.standby_workers(local_workers(argv)) as command:
        return run(argv, worker_command=command)


def _run(argv: list[str], now: float | None, worker_command: str | None) -> int:
    options = PipelineOptions(argv)
    try:
        unknown = unknown_flags(argv)
        if unknown:
            raise InvalidRequest(
                [f"unknown flag {u}: see `python -m pipelines.export --help`" for u in unknown]
            )
        request, files = validate(options, now=now)
    except InvalidRequest as e:
        for problem in e.problems:
            print(f"invalid request: {problem}", file=sys.stderr)
        return 2
    store = storage.open_storage(request.output)
    manifest_name = naming.manifest_name(request.request_id, request.run_ts)
    explicit_run = options.view_as(ExportOptions).run_timestamp
    if request.frequency == "recurring" and not explicit_run and store.exists(manifest_name):
        # A scheduled launch whose window is done already (a retried or doubled trigger): nothing to do.
        print(
            f"already exported: {store.display(manifest_name)} exists for window {request.window.describe()}"
        )
        return 0
    total = sum(f.size for f in files)
    log.info(
        "export %s run %s: %s %s, %s, %d source files (%s bytes) -> %s",
        request.request_id,
        request.run_ts,
        request.frequency,
        request.export_type,
        request.window.describe(),
        len(files),
        f"{total:,}",
        store.display(""),
    )
    started = time.monotonic()
    direct = options.view_as(StandardOptions).runner in (None, "DirectRunner", "direct")
    temp_root, spill = spill_location(options, request)
    if direct:  # on Dataflow the temp bucket's lifecycle rules are the place for that
        delete_stale_runs(temp_root, naming.run_prefix(request.request_id, request.run_ts))
    try:
        workers = worker_count(options)  # before make_runner takes the multi-process mode out of them
        p = beam.Pipeline(runner=make_runner(options, worker_command), options=options)
        shard_bytes = int(os.environ.get(SHARD_BYTES_ENV, SHARD_BYTES))
        build_pipeline(p, request, files, spill, shard_bytes=shard_bytes, workers=workers)
        result = p.run()
        result.wait_until_finish()
        state = getattr(result, "state", None)
        if state is not None and str(state) not in ("DONE", "PipelineState.DONE"):
            raise RuntimeError(f"the pipeline ended {state}")
    except Exception as e:  # the runner wraps worker errors; show the cause, not a trace
        log.debug("run failed", exc_info=True)
        print(f"run failed: {_one_line(e)}", file=sys.stderr)
        if direct:
            delete_runs(spill)  # a failed attempt leaves no copy of the data behind
        return 1
    if not direct and not store.exists(manifest_name):
        print("submitted; the manifest appears when the run is done", file=sys.stderr)
        return 0
    manifest = orjson.loads(store.read_bytes(manifest_name))
    print(summary(manifest, time.monotonic() - started))
    return 0


def usage() -> str:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m pipelines.export",
        description="Export analytics events or profiles to GCS or a folder (SPEC section 2). Beam's own flags "
        "(--runner, --direct_num_workers, --project, ...) pass through to the runner.",
    )
    ExportOptions._add_argparse_args(parser)
    return parser.format_help()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is logged (a caller may redirect it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


# Where the local runner logs what its worker processes log: "Worker: %s", a LogEntry in protobuf text format.
_WORKER_LOG = "apache_beam.runners.portability.local_job_service"
_OUR_CODE = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (naming, worker))


class _WorkerProgress(logging.Handler):
    """Our own log lines from the worker processes of a multi-process local run (the read tasks' progress),
    shown as this process shows its own; the rest of what the workers log shows only with CTEXPORT_DEBUG=1."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg != "Worker: %s" or not record.args:
            return
        from apache_beam.portability.api import beam_fn_api_pb2
        from apache_beam.runners.worker.log_handler import LOGENTRY_TO_LOG_LEVEL_MAP
        from google.protobuf import text_format

        try:
            entry = text_format.Parse(record.args[0], beam_fn_api_pb2.LogEntry())
        except text_format.ParseError:
            return
        if entry.log_location.startswith(_OUR_CODE):
            log.log(LOGENTRY_TO_LOG_LEVEL_MAP.get(entry.severity, logging.INFO), "%s", entry.message)


def _setup_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.DEBUG if os.environ.get(DEBUG_ENV) else logging.INFO)
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        h = _StderrHandler(sys.stderr)
        h.setFormatter(logging.Formatter("ctexport: %(message)s"))
        log.addHandler(h)
        log.propagate = False
    # A failed bundle makes Beam log the worker's traceback; the run's own one-line error says what failed.
    # CTEXPORT_DEBUG=1 shows everything.
    logging.getLogger("apache_beam").setLevel(
        logging.DEBUG if os.environ.get(DEBUG_ENV) else logging.CRITICAL
    )
    workers = logging.getLogger(_WORKER_LOG)
    if not os.environ.get(DEBUG_ENV) and not any(isinstance(h, _WorkerProgress) for h in workers.handlers):
        workers.setLevel(logging.INFO)
        workers.addHandler(_WorkerProgress())
        workers.propagate = False


def main(argv: list[str] | None = None) -> NoReturn:
    """The process entry (`python -m pipelines.export`, `ctexport export`): one export, then the process ends."""
    exit_now(run_process(argv))


def exit_now(status: int) -> NoReturn:
    """End a process whose export is over and reported without the interpreter's teardown: with Beam, gRPC and
    pyarrow loaded that took ~0.4 s here after the summary was printed (a 1,000-event export reaches its
    summary in ~2 s). Nothing is left for it to do: files and temporary folders are closed and removed by
    context managers, and the logs and output streams are flushed first."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say to it
            stream.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
