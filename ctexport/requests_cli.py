"""The `ctexport` commands around the export pipeline: destinations, create, activity, show, stop, tick and
scheduler (SPEC section 5; the original feature page's steps 3 and 4 and its Activity Log).

Each `*_main(argv)` returns the exit status: 0 ok, 1 a check or a run failed, 2 invalid usage or request.
Every command takes `--state URL` (default: $CTEXPORT_STATE, else ~/.ctexport), a folder or gs:// prefix.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import threading
import time

import orjson

from ctexport import runs, state
from ctexport.runs import DONE, FAILED, PENDING, RUNNING, STOPPED
from transforms.windows import (
    MAX_ONE_TIME_DAYS,
    PERIODS,
    format_run_timestamp,
    iso,
    parse_run_timestamp,
    parse_time,
)

TYPES = {"events": "All user events", "select-events": "Select events", "profiles": "All user profiles"}
FORMATS = ("json", "csv", "xml", "parquet")
DESTINATION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")
# Pipeline flags as `ctexport create` spells them, for the pipeline's validation messages.
FLAG_NAMES = {
    "--export_type": "--type",
    "--every_hours": "--every-hours",
    "--database_id": "--database-id",
    "--source_format": "--source-format",
    "--settle_minutes": "--settle-minutes",
    "--json_header": "--json-header",
    "--csv_formula_guard": "--csv-formula-guard",
    "--max_file_bytes": "--max-file-bytes",
    "--max_bad_records": "--max-bad-records",
}


class Usage(Exception):
    """An invalid command or request: one line saying what to change (exit status 2)."""


# ---- shared options -----------------------------------------------------------------------------------------


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"ctexport {prog}", description=description)
    _common(p)
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state",
        default=None,
        help=f"where requests and runs are kept: a folder or gs://bucket/prefix "
        f"(default: ${state.STATE_ENV}, else {state.DEFAULT_STATE})",
    )
    p.add_argument("--now", default=None, help=argparse.SUPPRESS)  # a fixed clock, for tests and replays


def _clock(args) -> runs.Clock:
    if args.now is None:
        return time.time
    try:
        fixed = float(parse_time(args.now))
    except ValueError:
        raise Usage(f"--now {args.now!r} is not a time: use ISO-8601 or yyyymmddHHMMSS (UTC)") from None
    return lambda: fixed


def _store(args) -> state.StateStore:
    return state.open_state(args.state)


def _parse(parser: argparse.ArgumentParser, argv: list[str]):
    try:
        return parser.parse_args(argv), None
    except SystemExit as e:  # --help (0) or a usage error (2, already printed)
        return None, int(e.code or 0)


def _guard(body) -> int:
    try:
        return body()
    except Usage as e:
        print(f"ctexport: {e}", file=sys.stderr)
        return 2


def _request_or_fail(store: state.StateStore, request_id: str) -> dict:
    req = runs.get_request(store, request_id)
    if req is None:
        raise Usage(f"no request {request_id!r} in {store.display()}: see `ctexport activity`")
    return req


def _dumps(value) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


# ---- destinations -------------------------------------------------------------------------------------------


def destinations_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="ctexport destinations", description="Saved output locations: a bucket, a prefix and a key file."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser(
        "add",
        help="check credentials and save a destination",
        description="Runs `ctexport credentials check` and saves the destination only when it passes. The key "
        "file's path is saved, never its content.",
    )
    add.add_argument("name", help="a name for the destination: letters, digits, _ . -")
    add.add_argument("--bucket", required=True, help="the bucket name, exactly as on GCP")
    add.add_argument("--prefix", default="", help="folder inside the bucket for the exports")
    add.add_argument(
        "--key-file", help="service-account key (JSON); default: Application Default Credentials"
    )
    add.add_argument("--replace", action="store_true", help="overwrite a destination of the same name")
    _common(add)
    ls = sub.add_parser("list", help="list saved destinations")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    _common(ls)
    rm = sub.add_parser("remove", help="forget a destination (requests made with it keep their output)")
    rm.add_argument("name")
    _common(rm)
    args, status = _parse(parser, argv)
    if args is None:
        return status
    return _guard(lambda: {"add": _dest_add, "list": _dest_list, "remove": _dest_remove}[args.action](args))


def _dest_add(args) -> int:
    from ctexport import credentials

    if not DESTINATION_RE.match(args.name):
        raise Usage(f"destination name {args.name!r} is not valid: use letters, digits, _ . - (at most 63)")
    store = _store(args)
    name = state.destination_name(args.name)
    if store.get(name) is not None and not args.replace:
        raise Usage(f"destination {args.name!r} exists: choose another name, or pass --replace")
    key_file = os.path.abspath(os.path.expanduser(args.key_file)) if args.key_file else None
    bucket, prefix = credentials.split_bucket(args.bucket, args.prefix)
    status, result = credentials.run_check(bucket, prefix, key_file)
    if status != 0:
        print(f"destination {args.name!r} was not saved", file=sys.stderr)
        return status
    data = {
        "name": args.name,
        "bucket": bucket,
        "prefix": prefix,
        "key_file": key_file,
        "principal": result.principal,
        "checked": iso(int(_clock(args)())),
    }
    existing = store.get(name)
    stored = store.update(name, data, existing.version) if existing else store.create(name, data)
    if stored is None:
        print(
            f"destination {args.name!r} changed while it was checked: run the command again", file=sys.stderr
        )
        return 1
    print(f"saved destination {args.name}: {result.location}")
    return 0


def _destination_url(d: dict) -> str:
    return f"gs://{d['bucket']}" + (f"/{d['prefix']}" if d.get("prefix") else "")


def _dest_list(args) -> int:
    store = _store(args)
    dests = [store.get(n) for n in store.list("destinations/")]
    dests = [d.data for d in dests if d is not None]
    if args.json:
        print(_dumps(dests))
        return 0
    if not dests:
        print(f"no destinations in {store.display()}: add one with `ctexport destinations add`")
        return 0
    rows = [
        [
            d["name"],
            _destination_url(d),
            d.get("key_file") or "(Application Default Credentials)",
            d["checked"],
        ]
        for d in dests
    ]
    print(_table(["NAME", "LOCATION", "KEY FILE", "CHECKED"], rows))
    return 0


def _dest_remove(args) -> int:
    store = _store(args)
    name = state.destination_name(args.name) if DESTINATION_RE.match(args.name) else None
    if name is None or store.get(name) is None:
        raise Usage(f"no destination {args.name!r}: see `ctexport destinations list`")
    store.delete(name)
    print(f"removed destination {args.name}")
    return 0


# ---- create -------------------------------------------------------------------------------------------------


def _create_parser() -> argparse.ArgumentParser:
    p = _parser(
        "create",
        "A new export request. A one-time request runs at once; a recurring one is registered, and "
        "`ctexport tick` (from cron, or `ctexport scheduler`) runs its windows. The request id is printed "
        "alone on the last line.",
    )
    p.add_argument("--type", choices=tuple(TYPES), default="events", help="what to export (default: events)")
    p.add_argument("--events", default="", help="select-events: names, comma-separated or a JSON array")
    p.add_argument("--frequency", choices=("once", "recurring"), default="once", help="default: once")
    p.add_argument("--every-hours", type=int, choices=PERIODS, help="recurring: the period in hours")
    p.add_argument("--start", help="one-time events: window start, ISO-8601 or yyyymmdd[HHMMSS] UTC")
    p.add_argument("--end", help="one-time events: window end (exclusive); default: now")
    p.add_argument("--days", type=int, help=f"one-time events: the last N days (at most {MAX_ONE_TIME_DAYS})")
    p.add_argument("--format", choices=FORMATS, default="json", help="default: json")
    p.add_argument("--compression", help="text: none or gzip; parquet: snappy (default), zstd, gzip, none")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--destination", help="a destination saved with `ctexport destinations add`")
    where.add_argument("--output", help="gs://bucket/prefix or a local folder")
    p.add_argument(
        "--database-id",
        default=os.environ.get("CTEXPORT_DATABASE_ID"),
        help="account id (default: $CTEXPORT_DATABASE_ID)",
    )
    p.add_argument(
        "--source",
        default=os.environ.get("CTEXPORT_SOURCE"),
        help="comma-separated globs of the event store, local or gs:// (default: $CTEXPORT_SOURCE)",
    )
    p.add_argument("--source-format", choices=("jsonl", "avro", "parquet"), help="default: by extension")
    p.add_argument(
        "--settle-minutes",
        type=int,
        default=15,
        help="recurring: export a window this long after it closes (default 15)",
    )
    p.add_argument("--timezone", default="UTC", help="IANA zone of dates in names and of ts (default UTC)")
    p.add_argument("--json-header", choices=("true", "false"), default="true", help="JSON: event name first")
    p.add_argument("--csv-formula-guard", choices=("true", "false"), default="false")
    p.add_argument("--max-file-bytes", type=int, help="largest object written (default 104857600)")
    p.add_argument("--max-bad-records", type=int, help="fail a run with more bad records (default: no limit)")
    return p


def create_main(argv: list[str]) -> int:
    args, status = _parse(_create_parser(), argv)
    if args is None:
        return status
    return _guard(lambda: _create(args))


def _parse_events(text: str) -> list[str] | None:
    from pipelines.options import parse_events

    try:
        names = parse_events(text)
    except ValueError:
        raise Usage("--events is not valid: give comma-separated names, or a JSON array of strings") from None
    return list(names) if names else None


def _build_request(args, store: state.StateStore, now: float) -> dict:
    """The request as stored, from the command line; raises Usage for anything to change."""
    events = _parse_events(args.events)
    if args.type == "select-events" and not events:
        raise Usage("--type select-events needs --events: the event names to export")
    if args.type == "events" and events:
        raise Usage("--events selects events: use --type select-events with it (--type events exports all)")
    if args.type == "profiles" and events:
        raise Usage("--events does not apply to profiles: drop it")
    if not args.source:
        raise Usage("--source is required: the event store's files, as globs (or set $CTEXPORT_SOURCE)")
    if not args.database_id:
        raise Usage(
            "--database-id is required: the account id, e.g. W4R-565-5Z4Z (or set $CTEXPORT_DATABASE_ID)"
        )
    if args.settle_minutes < 0:
        raise Usage("--settle-minutes must be 0 or more")

    key_file = destination = None
    if args.destination:
        doc = (
            store.get(state.destination_name(args.destination))
            if DESTINATION_RE.match(args.destination)
            else None
        )
        if doc is None:
            raise Usage(
                f"no destination {args.destination!r}: add it with `ctexport destinations add "
                f"{args.destination} --bucket NAME`, or see `ctexport destinations list`"
            )
        destination, key_file, output = args.destination, doc.data.get("key_file"), _destination_url(doc.data)
    elif args.output:
        output = args.output
    else:
        raise Usage(
            "say where the files go: --destination NAME (see `ctexport destinations list`) or --output URL"
        )

    export_type = "profiles" if args.type == "profiles" else "events"
    req = {
        "request_id": runs.new_request_id(now),
        "created": iso(int(now)),
        "type": args.type,
        "export_type": export_type,
        "events": events,
        "frequency": args.frequency,
        "every_hours": None,
        "settle_minutes": args.settle_minutes,
        "start": None,
        "end": None,
        "format": args.format,
        "compression": args.compression,
        "json_header": args.json_header == "true",
        "csv_formula_guard": args.csv_formula_guard == "true",
        "timezone": args.timezone,
        "max_file_bytes": args.max_file_bytes,
        "max_bad_records": args.max_bad_records,
        "source": args.source,
        "source_format": args.source_format,
        "output": output,
        "destination": destination,
        "key_file": key_file,
        "database_id": args.database_id,
    }
    given = (("--start", args.start), ("--end", args.end), ("--days", args.days))
    window_flags = [flag for flag, value in given if value is not None]
    if args.frequency == "recurring":
        if args.every_hours is None:
            raise Usage(
                f"--every-hours is required for a recurring export: one of {', '.join(map(str, PERIODS))}"
            )
        if window_flags:
            raise Usage(
                f"{window_flags[0]} is for one-time exports: a recurring run exports the period before it"
            )
        period = args.every_hours * 3600
        req["every_hours"] = args.every_hours
        # The first window is the one holding the moment of creation; later ones tile time from there.
        req["first_run_timestamp"] = format_run_timestamp((int(now) // period + 1) * period)
        req["done_through"] = None
        req["stopped"] = None
        return req

    if args.every_hours is not None:
        raise Usage("--every-hours is for recurring exports: drop it, or use --frequency recurring")
    run_epoch = int(now)
    req["run_timestamp"] = format_run_timestamp(run_epoch)
    if export_type == "profiles":
        if window_flags:
            raise Usage(
                f"{window_flags[0]} does not apply to profiles: a one-time profile export writes every profile"
            )
        return req
    if args.days is not None:
        if args.start or args.end:
            raise Usage("give either --days or --start/--end, not both")
        if not 1 <= args.days <= MAX_ONE_TIME_DAYS:
            raise Usage(
                f"--days {args.days} is out of range: a one-time export covers 1 to {MAX_ONE_TIME_DAYS} days"
            )
        start, end = run_epoch - args.days * 86400, run_epoch
    elif args.start:
        start = _time_flag("--start", args.start)
        end = _time_flag("--end", args.end) if args.end else run_epoch
    else:
        raise Usage(
            f"a one-time events export needs a window: --days N (at most {MAX_ONE_TIME_DAYS}) or --start/--end"
        )
    req["start"], req["end"] = iso(start), iso(end)
    return req


def _time_flag(flag: str, value: str) -> int:
    try:
        return parse_time(value)
    except ValueError:
        raise Usage(f"{flag} {value!r} is not a time: use ISO-8601 or yyyymmdd[HHMMSS] (UTC)") from None


def profile_conflict(store: state.StateStore, req: dict) -> dict | None:
    """The active recurring profile export to the same output location as this one-time profile export."""
    if req["export_type"] != "profiles" or runs.is_recurring(req):
        return None
    here = runs.output_location(req["output"])
    for other in runs.read_requests(store):
        if (
            other["export_type"] == "profiles"
            and runs.is_recurring(other)
            and not other.get("stopped")
            and runs.output_location(other["output"]) == here
        ):
            return other
    return None


def _validate_with_pipeline(req: dict, now: float) -> None:
    """The pipeline's own validation of the first run (bucket exists, sources match, ...): nothing is
    stored when it fails."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.options import InvalidRequest, validate

    run_ts = req.get("run_timestamp") or req["first_run_timestamp"]
    try:
        with runs.run_credentials(req.get("key_file")):
            validate(PipelineOptions(runs.pipeline_argv(req, run_ts)), now=now)
    except FileNotFoundError as e:
        raise Usage(str(e)) from None
    except InvalidRequest as e:
        problems = []
        for problem in e.problems:
            for pipeline_flag, flag in FLAG_NAMES.items():
                problem = problem.replace(pipeline_flag, flag)
            problems.append(problem)
        raise Usage("; ".join(problems)) from None


def _create(args) -> int:
    clock = _clock(args)
    now = clock()
    store = _store(args)
    req = _build_request(args, store, now)
    other = profile_conflict(store, req)
    if other is not None:
        raise Usage(
            f"recurring profile export {other['request_id']} writes to {runs.output_location(other['output'])}: "
            f"stop it first (`ctexport stop {other['request_id']}`) to run a one-time profile export there"
        )
    _validate_with_pipeline(req, now)

    if runs.is_recurring(req):
        if store.create(state.request_name(req["request_id"]), req) is None:
            raise Usage("a request with this id exists already: run the command again")
        first = req["first_run_timestamp"]
        ready = iso(parse_run_timestamp(first) + req["settle_minutes"] * 60)
        print(
            f"registered recurring {req['type']} export {req['request_id']}: every {req['every_hours']} h; first "
            f"window {runs.window_text(runs.run_window(req, first))}, due from {ready}; `ctexport tick` runs "
            "due windows"
        )
        print(req["request_id"])
        return 0

    # The run is claimed before the request is listed, so a concurrent tick never starts it as well.
    claim = runs.claim_run(store, req, req["run_timestamp"], owner=runs.new_owner(), clock=clock)
    if claim is None or store.create(state.request_name(req["request_id"]), req) is None:
        raise Usage("a request with this id exists already: run the command again")
    print(
        f"request {req['request_id']}: running {req['type']} export ({runs.window_text(claim.doc.data['window'])})"
    )
    run = runs.perform(claim, req, runs.export_runner, clock)
    print(f"request {req['request_id']}: {runs.describe_run(run)}")
    print(req["request_id"])
    return 0 if run["status"] == DONE else 1


# ---- activity and show --------------------------------------------------------------------------------------


def _summary(req: dict, request_runs: list[dict]) -> dict:
    done = [r for r in request_runs if r["status"] == DONE]
    last = request_runs[-1] if request_runs else None
    window = (
        last["window"]
        if last
        else (None if runs.is_recurring(req) else runs.run_window(req, req["run_timestamp"]))
    )
    return {
        "request_id": req["request_id"],
        "created": req["created"],
        "type": req["type"],
        "frequency": req["frequency"],
        "every_hours": req.get("every_hours"),
        "format": req["format"],
        "compression": req.get("compression"),
        "output": req["output"],
        "status": runs.request_status(req, request_runs),
        "last_window": window,
        "last_run": ({"run_timestamp": last["run_timestamp"], "status": last["status"]} if last else None),
        "runs": len(request_runs),
        "files": sum(r["file_count"] for r in done),
        "records": sum(r["records"] for r in done),
    }


def activity_main(argv: list[str]) -> int:
    p = _parser("activity", "The Activity Log: every export request, newest first.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--status", choices=(PENDING, RUNNING, DONE, FAILED, STOPPED), help="only requests in this status"
    )
    p.add_argument("--limit", type=int, help="at most this many requests")
    args, status = _parse(p, argv)
    if args is None:
        return status
    return _guard(lambda: _activity(args))


def _activity(args) -> int:
    store = _store(args)
    reqs = sorted(runs.read_requests(store), key=lambda r: (r["created"], r["request_id"]), reverse=True)
    rows = [_summary(r, runs.read_runs(store, r["request_id"])) for r in reqs]
    if args.status:
        rows = [r for r in rows if r["status"] == args.status]
    if args.limit is not None:
        rows = rows[: max(0, args.limit)]
    if args.json:
        print(_dumps(rows))
        return 0
    if not rows:
        print(f"no export requests in {store.display()}: create one with `ctexport create`")
        return 0
    table = [
        [
            r["request_id"],
            r["created"].replace("T", " ").rstrip("Z"),
            r["type"],
            "once" if r["frequency"] == "once" else f"every {r['every_hours']}h",
            r["format"] + (f"+{r['compression']}" if r["compression"] not in (None, "none") else ""),
            r["status"],
            runs.window_text(r["last_window"]) if r["last_window"] else "-",
            f"{r['files']:,}",
            f"{r['records']:,}",
        ]
        for r in rows
    ]
    header = [
        "REQUEST ID",
        "CREATED",
        "TYPE",
        "FREQUENCY",
        "FORMAT",
        "STATUS",
        "LAST WINDOW",
        "FILES",
        "RECORDS",
    ]
    print(_table(header, table, right={7, 8}))
    return 0


def show_main(argv: list[str]) -> int:
    p = _parser("show", "One export request with every run: window, status, files, counts, errors.")
    p.add_argument("request_id")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all-files", action="store_true", help="list every file of every run")
    args, status = _parse(p, argv)
    if args is None:
        return status
    return _guard(lambda: _show(args))


def _show(args) -> int:
    store = _store(args)
    req = _request_or_fail(store, args.request_id)
    request_runs = runs.read_runs(store, req["request_id"])
    summary = _summary(req, request_runs)
    if args.json:
        print(_dumps({"request": req, "status": summary["status"], "summary": summary, "runs": request_runs}))
        return 0
    kind = TYPES[req["type"]] + (f": {', '.join(req['events'])}" if req.get("events") else "")
    lines = [
        f"request {req['request_id']}",
        f"  status      {summary['status']}",
        f"  created     {req['created']}",
        f"  type        {kind}",
        "  frequency   "
        + (
            f"every {req['every_hours']} hours (settle {req['settle_minutes']} min)"
            if runs.is_recurring(req)
            else "once"
        ),
        f"  format      {req['format']}" + (f", {req['compression']}" if req.get("compression") else ""),
        f"  output      {req['output']}"
        + (f" (destination {req['destination']})" if req.get("destination") else ""),
        f"  source      {req['source']}",
        f"  database    {req['database_id']}",
    ]
    if runs.is_recurring(req):
        lines.append(f"  first run   {req['first_run_timestamp']}")
        if req.get("stopped"):
            lines.append(f"  stopped     {req['stopped']}")
        else:
            done = {r["run_timestamp"] for r in request_runs if r["status"] == DONE}
            following = [t for t in _next_windows(req) if t not in done][:1]
            if following:
                lines.append(f"  next run    {following[0]}")
    else:
        lines.append(f"  window      {runs.window_text(runs.run_window(req, req['run_timestamp']))}")
    lines.append(
        f"  totals      {summary['files']:,} files, {summary['records']:,} records in {_plural(len(request_runs), 'run')}"
    )
    lines.append("runs:" if request_runs else "runs: none yet")
    for r in request_runs:
        lines.append(
            f"  {r['run_timestamp']}  {r['status']:<8} {runs.window_text(r['window'])}  "
            f"attempts {len(r.get('attempts', []))}"
        )
        if r["status"] == DONE:
            lines.append(
                f"    {r['file_count']:,} files, {r['records']:,} records, {r['bad']:,} bad, {r['bytes']:,} bytes; "
                f"manifest {r['manifest']}"
            )
            files = r.get("files", [])
            shown = files if args.all_files else files[:10]
            lines += [f"      {f}" for f in shown]
            if len(files) > len(shown):
                lines.append(f"      ... and {len(files) - len(shown)} more (--all-files, or the manifest)")
            lines += [f"      {e}  (dead letters)" for e in r.get("errors", [])]
        elif r["status"] == RUNNING:
            lines.append(f"    owner {r.get('owner')}, lease until {iso(int(r['lease_until'] or 0))}")
        for a in r.get("attempts", []):
            if a.get("error"):
                lines.append(f"    attempt {a['number']} {a['status']}: {a['error']}")
    print("\n".join(lines))
    return 0


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _next_windows(req: dict) -> list[str]:
    period = runs.period_seconds(req)
    t = parse_run_timestamp(req.get("done_through") or req["first_run_timestamp"])
    if req.get("done_through"):
        t += period
    return [format_run_timestamp(t + i * period) for i in range(400)]


def _table(header: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells) -> str:
        out = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    return "\n".join([line(header)] + [line(r) for r in rows])


# ---- stop, tick, scheduler ----------------------------------------------------------------------------------


def stop_main(argv: list[str]) -> int:
    p = _parser("stop", "Stop a recurring export request: no further windows run (status Stopped).")
    p.add_argument("request_id")
    args, status = _parse(p, argv)
    if args is None:
        return status
    return _guard(lambda: _stop(args))


def _stop(args) -> int:
    store = _store(args)
    req = _request_or_fail(store, args.request_id)
    if not runs.is_recurring(req):
        raise Usage(
            f"request {req['request_id']} is a one-time export: only recurring requests can be stopped"
        )
    if req.get("stopped"):
        print(f"request {req['request_id']} was already stopped at {req['stopped']}")
        return 0
    when = iso(int(_clock(args)()))

    def change(data: dict) -> dict | None:
        if data.get("stopped"):
            return None
        data["stopped"] = when
        return data

    store.modify(state.request_name(req["request_id"]), change)
    print(f"stopped request {req['request_id']}: no further windows will run (a run in progress finishes)")
    return 0


def _tick_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--request", action="append", dest="requests", help="only this request (repeatable)")
    p.add_argument("--max-attempts", type=int, default=runs.MAX_ATTEMPTS, help="attempts per run (default 3)")
    p.add_argument("--lease-minutes", type=float, default=runs.LEASE_SECONDS / 60, help=argparse.SUPPRESS)


def tick_main(argv: list[str]) -> int:
    p = _parser(
        "tick",
        "Run every due window of every active recurring request, oldest first, catching up missed windows and "
        "never running a window twice; also resumes unfinished one-time runs. Call it from cron (e.g. every "
        "15 minutes) or use `ctexport scheduler`.",
    )
    _tick_options(p)
    args, status = _parse(p, argv)
    if args is None:
        return status
    return _guard(lambda: _tick(args, _clock(args)))


def _tick(args, clock: runs.Clock) -> int:
    report = runs.tick(
        _store(args),
        clock,
        request_ids=args.requests,
        max_attempts=max(1, args.max_attempts),
        lease_seconds=max(60, int(args.lease_minutes * 60)),
    )
    ran = len(report.done) + len(report.failed)
    if ran == 0:
        print("tick: nothing due")
    else:
        print(f"tick: {_plural(ran, 'run')}: {len(report.done)} done, {len(report.failed)} failed")
    return 1 if report.failed else 0


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM stops the scheduler as Ctrl-C does: a run in progress is recorded Failed (the next tick resumes
    it with the same run timestamp) instead of being left Running until its lease expires."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def scheduler_main(argv: list[str], stop_event: threading.Event | None = None) -> int:
    p = _parser(
        "scheduler", "Run `ctexport tick` every few minutes until interrupted (for machines without cron)."
    )
    _tick_options(p)
    p.add_argument("--interval-minutes", type=float, default=5.0, help="time between ticks (default 5)")
    p.add_argument("--iterations", type=int, default=None, help=argparse.SUPPRESS)
    args, status = _parse(p, argv)
    if args is None:
        return status
    stop_event = stop_event or threading.Event()

    def loop() -> int:
        clock = _clock(args)
        n = 0
        try:
            while args.iterations is None or n < args.iterations:
                if n:
                    if stop_event.wait(max(0.0, args.interval_minutes * 60)):
                        break
                n += 1
                try:
                    _tick(args, clock)
                except Usage:
                    raise
                except Exception as e:  # a network error or the like: the next tick tries again
                    print(
                        f"scheduler: tick failed ({type(e).__name__}: {e}); trying again later",
                        file=sys.stderr,
                    )
                sys.stdout.flush()
        except KeyboardInterrupt:
            print("scheduler: stopped")
        return 0

    with _sigterm_interrupts():
        return _guard(loop)
