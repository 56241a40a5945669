"""Every flag of SPEC section 2, and the validation that turns them into a `Request` before any data is read."""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field

import orjson
from apache_beam.options.pipeline_options import PipelineOptions

from transforms import naming, storage
from transforms.sources import FORMATS as SOURCE_FORMATS
from transforms.sources import format_of
from transforms.windows import (
    MAX_ONE_TIME_DAYS,
    PERIODS,
    Window,
    default_run_timestamp,
    export_window,
    format_run_timestamp,
    parse_run_timestamp,
    parse_time,
)

OUTPUT_FORMATS = ("json", "csv", "xml", "parquet")
TEXT_COMPRESSIONS = ("none", "gzip")
PARQUET_COMPRESSIONS = ("snappy", "zstd", "gzip", "none")
DEFAULT_MAX_FILE_BYTES = 104857600
MIN_MAX_FILE_BYTES = 1024
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_]+$")
DATABASE_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def _bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise ValueError(f"expected true or false, not {text!r}")


class ExportOptions(PipelineOptions):
    """The export request. Mirrored one to one by templates/metadata.json."""

    @classmethod
    def _add_argparse_args(cls, parser):
        a = parser.add_argument
        a("--source", help="Comma-separated globs of input files, local or gs://")
        a("--source_format", default=None, help="jsonl, avro or parquet; default: by file extension")
        a("--export_type", default="events", help="events or profiles")
        a(
            "--events",
            default="",
            help="Event names to export, comma-separated or a JSON array; empty: all events",
        )
        a("--frequency", default="once", help="once or recurring")
        a(
            "--start",
            default=None,
            help="One-time events: window start (inclusive), ISO-8601 or yyyymmdd[HHMMSS], UTC",
        )
        a(
            "--end",
            default=None,
            help="One-time events: window end (exclusive), ISO-8601 or yyyymmdd[HHMMSS], UTC",
        )
        a("--every_hours", default=None, help="Recurring: the period, 4, 6, 8, 12 or 24 hours")
        a("--run_timestamp", default=None, help="yyyymmddHHMMSS UTC, the logical time of the run")
        a(
            "--settle_minutes",
            default="15",
            help="Recurring: minutes after a window closes before it is exported",
        )
        a("--format", dest="format", default="json", help="json, csv, xml or parquet")
        a(
            "--compression",
            default=None,
            help="Text: none or gzip (default none); Parquet: snappy (default), zstd, gzip, none",
        )
        a(
            "--json_header",
            default="true",
            help="JSON: first line is the event name (true) or plain NDJSON (false)",
        )
        a(
            "--csv_formula_guard",
            default="false",
            help="CSV: prefix ' to text cells starting with = + - @ tab CR",
        )
        a("--output", help="gs://bucket/prefix or a local folder")
        a("--request_id", help="Export request id: letters, digits and _")
        a("--database_id", help="Account id: letters, digits, _ and -")
        a(
            "--max_file_bytes",
            default=str(DEFAULT_MAX_FILE_BYTES),
            help="Largest object written, in stored bytes",
        )
        a(
            "--max_bad_records",
            default=None,
            help="Fail the run when its bad records exceed this; default: no limit",
        )
        a("--timezone", default="UTC", help="IANA zone of yyyymmdd in names and of ts in JSON, CSV and XML")


@dataclass(frozen=True)
class Request:
    """A validated export request: what every transform needs, as plain values (picklable, no Beam)."""

    sources: tuple[str, ...]
    source_format: str | None
    export_type: str
    events: tuple[str, ...] | None
    frequency: str
    start: int | None
    end: int | None
    every_hours: int | None
    run_ts: str
    run_epoch: int
    settle_minutes: int
    format: str
    compression: str
    json_header: bool
    csv_formula_guard: bool
    output: str
    request_id: str
    database_id: str
    max_file_bytes: int
    max_bad_records: int | None
    timezone: str
    window: Window = field(default=None)

    @property
    def ext(self) -> str:
        return naming.extension(self.format, self.compression)

    def as_manifest(self) -> dict:
        d = asdict(self)
        d.pop("window")
        d.pop("run_epoch")
        d["events"] = list(self.events) if self.events is not None else None
        d["sources"] = list(self.sources)
        return d


class InvalidRequest(Exception):
    """The request cannot run; `problems` holds one line per problem, each saying what to change."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def parse_events(text: str) -> tuple[str, ...] | None:
    text = (text or "").strip()
    if not text:
        return None
    if text.startswith("["):
        names = orjson.loads(text)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("a JSON array of strings")
    else:
        names = [n.strip() for n in text.split(",")]
    names = [n for n in names if n]
    return tuple(dict.fromkeys(names)) or None


def validate(
    opts: PipelineOptions, now: float | None = None, check_storage: bool = True
) -> tuple[Request, list[storage.SourceFile]]:
    """Check the whole request; raise InvalidRequest listing every problem. Reads no data, writes nothing.

    Returns the request and the source files its globs match (none when check_storage is False).
    """
    o = opts.view_as(ExportOptions)
    problems: list[str] = []

    def bad(msg: str) -> None:
        problems.append(msg)

    def choice(name: str, value, allowed) -> str | None:
        if value not in allowed:
            bad(f"--{name} {value!r} is not valid: use one of {', '.join(allowed)}")
            return None
        return value

    export_type = choice("export_type", o.export_type, ("events", "profiles"))
    frequency = choice("frequency", o.frequency, ("once", "recurring"))
    fmt = choice("format", o.format, OUTPUT_FORMATS)
    compression = o.compression
    if fmt == "parquet":
        compression = choice("compression", compression or "snappy", PARQUET_COMPRESSIONS)
    elif fmt:
        compression = choice("compression", compression or "none", TEXT_COMPRESSIONS)

    flags = {}
    for name in ("json_header", "csv_formula_guard"):
        try:
            flags[name] = _bool(getattr(o, name))
        except ValueError:
            bad(f"--{name} {getattr(o, name)!r} is not valid: use true or false")

    events = None
    try:
        events = parse_events(o.events)
    except ValueError:
        bad(
            "--events is not valid: give comma-separated names, or a JSON array of strings for names with commas"
        )
    if events and export_type == "profiles":
        bad("--events selects events: drop it for a profile export")

    def integer(name: str, value, minimum: int) -> int | None:
        if value is None:
            return None
        try:
            v = int(str(value))
        except ValueError:
            bad(f"--{name} {value!r} is not a whole number")
            return None
        if v < minimum:
            bad(f"--{name} must be at least {minimum}")
            return None
        return v

    max_file_bytes = integer("max_file_bytes", o.max_file_bytes, MIN_MAX_FILE_BYTES)
    max_bad = integer("max_bad_records", o.max_bad_records, 0)
    settle = integer("settle_minutes", o.settle_minutes, 0)
    every = None
    if frequency == "recurring":
        if o.every_hours is None:
            bad(
                f"--every_hours is required for a recurring export: use one of {', '.join(map(str, PERIODS))}"
            )
        else:
            try:
                every = int(str(o.every_hours))
            except ValueError:
                every = None
            if every not in PERIODS:
                bad(
                    f"--every_hours {o.every_hours} is not valid: use one of {', '.join(map(str, PERIODS))} (they divide a day)"
                )
                every = None
        if o.start or o.end:
            bad(
                "--start/--end are for one-time exports: a recurring run exports the period before --run_timestamp"
            )
    elif frequency == "once" and o.every_hours is not None:
        bad("--every_hours is for recurring exports: drop it, or use --frequency recurring")

    timezone = o.timezone or "UTC"
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(timezone)
    except Exception:
        bad(
            f"--timezone {timezone!r} is not an IANA time zone name (for example UTC, Asia/Kolkata, America/New_York)"
        )

    now = time.time() if now is None else now
    run_epoch = None
    if o.run_timestamp:
        try:
            run_epoch = parse_run_timestamp(str(o.run_timestamp))
        except ValueError:
            bad(f"--run_timestamp {o.run_timestamp!r} is not valid: use yyyymmddHHMMSS (UTC)")
    elif frequency and (frequency == "once" or every) and settle is not None:
        run_epoch = default_run_timestamp(frequency, every, settle, now)

    start = end = None
    if frequency == "once" and export_type == "events":
        for name in ("start", "end"):
            value = getattr(o, name)
            if not value:
                bad(f"--{name} is required for a one-time events export (ISO-8601 or yyyymmdd[HHMMSS], UTC)")
                continue
            try:
                t = parse_time(str(value))
            except ValueError:
                bad(f"--{name} {value!r} is not a time: use ISO-8601 or yyyymmdd[HHMMSS] (UTC)")
                continue
            if name == "start":
                start = t
            else:
                end = t
        if start is not None and end is not None and start >= end:
            bad("--start must be before --end: the window is [start, end)")
        if start is not None and run_epoch is not None and start < run_epoch - MAX_ONE_TIME_DAYS * 86400:
            bad(
                f"--start reaches more than {MAX_ONE_TIME_DAYS} days before the run: a one-time export covers at most the last {MAX_ONE_TIME_DAYS} days"
            )
    elif frequency == "once" and export_type == "profiles" and (o.start or o.end):
        bad("--start/--end do not apply to profiles: a one-time profile export writes every profile")

    request_id = o.request_id or ""
    if not REQUEST_ID_RE.match(request_id):
        bad("--request_id is required and may hold only letters, digits and _")
    database_id = o.database_id or ""
    if not DATABASE_ID_RE.match(database_id):
        bad("--database_id is required and may hold only letters, digits, _ and -")

    source_format = o.source_format
    if source_format is not None and source_format not in SOURCE_FORMATS:
        bad(f"--source_format {source_format!r} is not valid: use one of {', '.join(SOURCE_FORMATS)}")
        source_format = None
    patterns = [p.strip() for p in (o.source or "").split(",") if p.strip()]
    files: list[storage.SourceFile] = []
    if not patterns:
        bad("--source is required: one or more comma-separated globs, local or gs://")
    if not o.output:
        bad("--output is required: gs://bucket/prefix or a local folder")

    if problems:
        raise InvalidRequest(problems)

    if check_storage:
        out = storage.open_storage(o.output)
        problem = out.check_location()
        if problem:
            bad(f"--output: {problem}")
        try:
            files, unmatched = storage.expand_sources(patterns)
        except Exception as e:  # a source bucket that does not exist, a permission error
            bad(f"--source cannot be listed ({type(e).__name__}: {e}); check the path and your access")
            unmatched = []
        for p in unmatched:
            bad(f"--source {p!r} matches no file; check the path and the glob")
        if not o.source_format:
            unknown = [f.url for f in files if format_of(f.url) is None]
            if unknown:
                bad(
                    f"--source file {unknown[0]!r} has no known extension (.jsonl, .json, .avro, .parquet, optionally .gz): set --source_format"
                )
        if problems:
            raise InvalidRequest(problems)

    window = export_window(export_type, frequency, run_epoch, start, end, every)
    request = Request(
        sources=tuple(patterns),
        source_format=source_format,
        export_type=export_type,
        events=events,
        frequency=frequency,
        start=start,
        end=end,
        every_hours=every,
        run_ts=format_run_timestamp(run_epoch),
        run_epoch=run_epoch,
        settle_minutes=settle,
        format=fmt,
        compression=compression,
        json_header=flags["json_header"],
        csv_formula_guard=flags["csv_formula_guard"],
        output=o.output,
        request_id=request_id,
        database_id=database_id,
        max_file_bytes=max_file_bytes,
        max_bad_records=max_bad,
        timezone=timezone,
        window=window,
    )
    return request, files


def unknown_flags(argv: list[str]) -> list[str]:
    """Flags no options class declares (Beam would drop them with a warning; a typo must not pass silently)."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    seen = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(argv)
    return [u.split("=", 1)[0] for u in unknown if u.startswith("--")]
