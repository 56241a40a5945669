"""Parse, validate and select records, keyed by series: one (event name, date), or all profiles.

`ExtractSeries` reads each `ReadTask` in one DoFn call: it decodes and checks every record, keeps those in the
run's window and renders each as its JSON data line. It sorts what it found for each series and writes it to a
run file (`transforms/runs.py`), emitting only a small `RunRef` per series per task, so neither the shuffle
nor any one process holds the export's bytes. Bad records leave on the `dead_letters` output with their reason
and source position; each task also emits its counts on `stats`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import apache_beam as beam
import orjson
from apache_beam import pvalue

from transforms import runs, sources, storage
from transforms.formats.base import EVENTS, PROFILES, SeriesContext
from transforms.formats.csv import add_keys
from transforms.formats.values import EVENT_OBJECTS
from transforms.formats.xml import XmlEncoder
from transforms.naming import PROFILES_NAME
from transforms.pool import WorkPool
from transforms.records import BadRecord, Good, RecordChecker, decode_json, long_digit_runs
from transforms.runs import RunRef
from transforms.sources import ReadTask
from transforms.windows import MAX_TS, LocalTime

log = logging.getLogger("ctexport")
NAMESPACE = "ctexport"
DEAD_LETTERS = "dead_letters"
STATS = "stats"
RECORD_TEXT_LIMIT = 64 * 1024

# Counts a task reports; finalize adds them up and checks that read = exported + superseded + out_of_scope +
# bad, and that every read task reported once ("tasks": 1 from each).
STAT_KEYS = ("tasks", "read", "selected", "out_of_scope", "bad", "unplaced", "superseded", "xml_replaced")


@dataclass(frozen=True)
class DeadLetter:
    """One bad record. `order` sorts dead letters in source order: (file index, byte offset or record no.)."""

    order: tuple[int, int]
    file: str
    position_kind: str  # "line" or "record"
    position: int
    reason: str
    detail: str
    text: str
    truncated: bool
    unplaced: bool

    def as_json(self) -> dict:
        out = {
            "reason": self.reason,
            "detail": self.detail,
            "source": {"file": self.file, self.position_kind: self.position},
            "record": self.text,
        }
        if self.truncated:
            out["record_truncated"] = True
        if self.unplaced:
            out["unplaced"] = True
        return out


def record_text(raw: bytes | str, limit: int = RECORD_TEXT_LIMIT) -> tuple[str, bool]:
    """The original record as text, cut to its first `limit` bytes (invalid UTF-8 shown as U+FFFD)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    truncated = len(data) > limit
    if truncated:
        data = data[:limit]
    return data.decode("utf-8", "replace"), truncated


class _Accumulator:
    """What one read task found: records per series, dead letters, counts."""

    def __init__(self, task_index: int, profiles: bool, csv_keys: bool):
        self.base = task_index << 32  # a record's position: task index << 32 | its index in the task
        # Events: every series' records in columns (`runs.EventColumns`). Profiles: the records per series,
        # as tuples of a Record's fields (they carry `created` and the object id too).
        self.events = None if profiles else runs.EventColumns()
        self.series: dict[tuple[str, str], list[tuple]] = {}
        self.dead: list[DeadLetter] = []
        self.stats = dict.fromkeys(STAT_KEYS, 0)
        self.stats["tasks"] = 1
        # CSV events: each series' keys of profile, deviceInfo and eventProps, gathered while the records are
        # decoded, so the writer needs no pass over the series for its header.
        self.csv_keys: dict[tuple[str, str], tuple[set, set, set]] | None = {} if csv_keys else None

    def add(self, good: Good, pos: int) -> None:
        if self.events is not None:
            self.events.add(good.key, good.ts, good.line, pos)
        else:
            recs = self.series.get(good.key)
            if recs is None:
                recs = self.series[good.key] = []
            # A Record's fields.
            recs.append((good.ts, good.line, self.base | pos, good.created, good.object_id))
        if self.csv_keys is not None:
            keys = self.csv_keys.get(good.key)
            if keys is None:
                keys = self.csv_keys[good.key] = (set(), set(), set())
            add_keys(zip(EVENT_OBJECTS, keys, strict=True), orjson.loads(good.line))


class _ParseTask(beam.DoFn):
    def __init__(
        self,
        request,
        tasks: list[ReadTask],
        file_order: dict[str, int],
        name_budget: int,
        spill: str,
        pool: str | None = None,
    ):
        self._request = request
        self._tasks = tasks
        self._file_order = file_order
        self._name_budget = name_budget
        self._spill = spill
        self._pool_folder = pool
        self._read = beam.metrics.Metrics.counter(NAMESPACE, "records_read")
        self._bad = beam.metrics.Metrics.counter(NAMESPACE, "bad_records")

    def setup(self):
        runs.use_system_allocator()
        r = self._request
        self._local = LocalTime(r.timezone)
        self._minutes: dict[
            int, tuple[int, str] | None
        ] = {}  # epoch minute -> its local rendering, kept across tasks
        run_date = self._local.date(r.run_epoch)
        self._profile_key = (PROFILES_NAME, run_date)
        self._checker = RecordChecker(
            r.export_type,
            r.window,
            frozenset(r.events) if r.events is not None else None,
            r.timezone,
            run_date,
            self._name_budget,
        )
        # XML is encoded here, where each record is decoded already: the writer then only joins elements.
        self._xml: dict[str, XmlEncoder] | None = {} if r.format == "xml" else None
        self._pool = None if self._pool_folder is None else WorkPool(self._pool_folder)
        self._keys_sent: dict[tuple[str, str], tuple[set, set, set]] = {}  # see `_meta`

    def start_bundle(self):
        self._keys_sent = {}

    def _xml_encoder(self, name: str) -> XmlEncoder:
        enc = self._xml.get(name)
        if enc is None:
            kind = PROFILES if self._request.export_type == "profiles" else EVENTS
            enc = self._xml[name] = XmlEncoder(SeriesContext(kind, name), ())
        return enc

    def _encoded(self, good: Good) -> Good:
        """The record as the writer will store it: its JSON data line, or for XML its element."""
        if self._xml is None:
            return good
        line = self._xml_encoder(good.key[0]).encode_data(orjson.loads(good.line), good.line)
        return Good(good.key, good.ts, good.created, line, good.object_id)

    def process(self, task_index: int):
        if self._pool is None:
            yield from self._parse(task_index)
            return
        # A multi-process local run: this worker reads whichever tasks are left, in order, until none is;
        # which task index the runner handed it does not matter (`transforms.pool`).
        for claimed in self._pool.take(len(self._tasks)):
            yield from self._parse(claimed)

    def _parse(self, task_index: int):
        task = self._tasks[task_index]
        with runs.paused_gc():
            r = self._request
            profiles = r.export_type == "profiles"
            acc = _Accumulator(task_index, profiles, r.format == "csv" and not profiles)
            records = _TaskRecords(task, self._file_order[task.url])
            if task.fmt == "jsonl" and self._request.export_type == "events":
                self._events_jsonl(records, acc)
            else:
                self._general(records, acc)
            refs = self._write_runs(task_index, acc)
            if self._xml:
                acc.stats["xml_replaced"] = sum(e.replaced_chars for e in self._xml.values())
                for e in self._xml.values():
                    e.replaced_chars = 0
        yield from refs
        for d in acc.dead:
            yield pvalue.TaggedOutput(DEAD_LETTERS, d)
        yield pvalue.TaggedOutput(STATS, acc.stats)
        self._read.inc(acc.stats["read"])
        self._bad.inc(acc.stats["bad"])
        log.info(
            "read %s: %s records, %s bad, %d series",
            task.label,
            f"{acc.stats['read']:,}",
            acc.stats["bad"],
            len(refs),
        )

    def _write_runs(self, task_index: int, acc: _Accumulator) -> list[tuple]:
        """Sort each series found and write it to the task's run file. Returns (series key, RunRef) pairs."""
        if not (acc.series or acc.events and acc.events.series):
            return []
        out = []
        name = f"{task_index:06d}.run"
        path = runs.local_path(self._spill, name)
        with tempfile.TemporaryDirectory(prefix="ctexport-run-") as tmp:
            local = path or os.path.join(tmp, name)  # a gs:// spill location: write locally, then upload
            url = path or f"{self._spill.rstrip('/')}/{name}"
            with runs.RunFile(local) as f:
                if acc.events is not None:
                    # Sorted by (ts, line, position), in Arrow: series order, and a fixed order for identical
                    # records.
                    for key, count, offset, length, nbytes in f.add_columns(acc.events, acc.base):
                        meta = self._meta(key, acc)
                        out.append((key, RunRef(url, task_index, count, nbytes, offset, length, meta)))
                for key in sorted(acc.series):  # profiles
                    recs = acc.series[key]
                    recs.sort()  # by (ts, line, position): series order, and a fixed order for identical records
                    offset, length, nbytes = f.add(recs, True)
                    out.append((key, RunRef(url, task_index, len(recs), nbytes, offset, length, None)))
            if path is None:
                storage.open_storage(self._spill).write_file(name, local)
        return out

    def _meta(self, key: tuple[str, str], acc: _Accumulator):
        """What the writer of an events series needs of this run besides its records (`RunRef.meta`): the
        CSV header's keys per object. (Parquet's writer reads a series' types with its lines, in one pass.)

        Only the keys this bundle has not sent with an earlier run of the series: the writer takes the union
        over the series' runs, and a bundle's outputs are kept or dropped together, so the union is the same.
        Sent in every run, the same keys made a 5M-event two-process CSV export hold ~24,000 copies of them
        (a run per read task and series): ~200 MB more in the runner's process, ~150 MB more in each worker."""
        r = self._request
        if not (r.export_type == "events" and r.format == "csv"):
            return None
        sent = self._keys_sent.get(key)
        if sent is None:
            sent = self._keys_sent[key] = (set(), set(), set())
        found = acc.csv_keys.get(key, ((), (), ()))
        new = tuple(frozenset(keys).difference(old) for keys, old in zip(found, sent, strict=True))
        for old, keys in zip(sent, new, strict=True):
            old.update(keys)
        return new

    def _general(self, records: _TaskRecords, acc: _Accumulator) -> None:
        """Any source and export type: every record through the checker."""
        profiles = self._request.export_type == "profiles"
        latest: dict[str, tuple[Good, int]] = {}  # profiles: objectId -> its latest version so far
        stats = acc.stats
        for n, raw, rec in records:
            stats["read"] += 1
            good = self._check(records, acc, n, raw, rec)
            if good is None:
                continue
            if profiles:
                prev = latest.get(good.object_id)
                if prev is not None:
                    stats["superseded"] += 1
                    if (prev[0].ts, prev[0].line) >= (good.ts, good.line):
                        continue
                latest[good.object_id] = (good, n)
                continue
            acc.add(self._encoded(good), n)
        for good, n in latest.values():
            acc.add(
                self._encoded(Good(self._profile_key, good.ts, good.created, good.line, good.object_id)), n
            )

    def _check(self, records: _TaskRecords, acc: _Accumulator, n: int, raw, rec) -> Good | None:
        """The careful path: decode and check one record; a bad one becomes a dead letter."""
        try:
            if rec is None:
                rec = decode_json(raw, records.long_digits)
            elif type(rec) is BadRecord:
                raise rec
            good = self._checker.check(rec)
        except BadRecord as e:
            acc.stats["bad"] += 1
            unplaced = e.placement is None and self._request.window.field is not None
            acc.stats["unplaced"] += unplaced
            acc.dead.append(self._dead_letter(records, n, raw, e, unplaced))
            return None
        if good is None:
            acc.stats["out_of_scope"] += 1
        else:
            acc.stats["selected"] += 1
        return good

    def _events_jsonl(self, records: _TaskRecords, acc: _Accumulator) -> None:
        """Events from JSON Lines: a tight loop for records that are plainly good, the checker for the rest.

        The fast path accepts only what the checker would accept (a name it has already approved, times in
        range, objects that are objects) and sends everything else, bad or unusual, to `_check`.
        """
        loads = orjson.loads
        dumps = orjson.dumps
        decode_error = orjson.JSONDecodeError
        good_names = self._checker.good_names
        window = self._request.window
        w_start, w_end = window.start, window.end
        by_capture = window.field == "capturedAt"
        selected = self._checker.events
        xml = self._xml is not None
        minute = self._local.minute
        minutes = self._minutes
        columns = acc.events
        tags = columns.series
        blob = columns.blob
        add_end = columns.ends.append
        add_ts = columns.ts.append
        add_tagged = columns.tagged.append
        csv_keys = acc.csv_keys
        stats = acc.stats
        read = selected_n = out_of_scope = 0
        data = records.read()
        may_overflow = long_digit_runs(data) != []
        if len(minutes) > 1_000_000:
            minutes.clear()
        for i, line in enumerate(data.split(b"\n")):
            try:
                rec = loads(line)
            except decode_error:
                if not line.strip():
                    continue  # a blank line is not a record
                rec = None
            read += 1
            if type(rec) is dict:
                name = rec.get("eventName")
                ts = rec.get("ts")
                cap = rec.get("capturedAt", ts)
                if cap is None:
                    cap = ts
                profile = rec.get("profile")
                device = rec.get("deviceInfo")
                props = rec.get("eventProps")
                if (
                    type(name) is str
                    and name in good_names
                    and type(ts) is int
                    and 0 <= ts < MAX_TS
                    and type(cap) is int
                    and 0 <= cap < MAX_TS
                    and (profile is None or type(profile) is dict)
                    and (device is None or type(device) is dict)
                    and (props is None or type(props) is dict)
                    and not (may_overflow and records.line_may_overflow(line))
                ):
                    placed = cap if by_capture else ts
                    if not w_start <= placed < w_end or (selected is not None and name not in selected):
                        out_of_scope += 1
                        continue
                    m = ts // 60
                    cached = minutes.get(m, 0)
                    if cached == 0:
                        cached = minutes[m] = minute(m)
                    if cached is None:
                        stamp, date = self._local.stamp_and_date(ts)
                    else:
                        stamp, date = cached[0] + ts - m * 60, cached[1]
                    if profile is not None and device is not None and props is not None:
                        out = {"profile": profile, "ts": stamp, "deviceInfo": device, "eventProps": props}
                    else:
                        out = {}
                        if profile is not None:
                            out["profile"] = profile
                        out["ts"] = stamp
                        if device is not None:
                            out["deviceInfo"] = device
                        if props is not None:
                            out["eventProps"] = props
                    key = (name, date)
                    tag = tags.get(key)
                    if tag is None:
                        tag = columns.tag(key)
                    if csv_keys is not None:
                        keys = csv_keys.get(key)
                        if keys is None:
                            keys = csv_keys[key] = (set(), set(), set())
                        if profile:
                            keys[0].update(profile)
                        if device:
                            keys[1].update(device)
                        if props:
                            keys[2].update(props)
                    # The record into the task's columns (`runs.EventColumns.add`): its line is copied into one
                    # buffer. (Holding the bytes orjson.dumps returns would fragment the heap: each keeps its
                    # shrunk output buffer's allocation.) XML stores the element instead, and needs no data
                    # line: the input line holds every string of it.
                    if xml:
                        blob += self._xml_encoder(name).encode_data(out, line)
                    else:
                        blob += dumps(out)
                    add_end(len(blob))
                    add_ts(ts)
                    add_tagged(tag | i)
                    selected_n += 1
                    continue
            records.long_digits = may_overflow
            good = self._check(records, acc, i, line, None)
            if good is not None:
                acc.add(self._encoded(good), i)
        stats["read"] += read
        stats["selected"] += selected_n
        stats["out_of_scope"] += out_of_scope

    def _dead_letter(self, records: _TaskRecords, n: int, raw, err: BadRecord, unplaced: bool) -> DeadLetter:
        kind, position, order = records.position(n)
        text, truncated = record_text(raw if raw is not None else sources.row_text(records.current_row))
        task = records.task
        return DeadLetter(order, task.url, kind, position, err.reason, err.detail, text, truncated, unplaced)


class _TaskRecords:
    """The records of one read task, and where each came from.

    A JSON Lines record is known by its index among the task's lines (blank ones included), so its line number
    is the lines before the task's range plus that index plus one. An Avro or Parquet record is known by its
    record number in the file, from 1.
    """

    def __init__(self, task: ReadTask, file_index: int):
        self.task = task
        self.file_index = file_index
        self._base_line: int | None = None
        self._begin = 0
        self._data = b""
        self.long_digits = True  # the current line may hold a run of 19 digits
        self.current_row = None

    def read(self) -> bytes:
        self._data, self._begin = sources.read_lines(self.task)
        return self._data

    @staticmethod
    def line_may_overflow(line: bytes) -> bool:
        return long_digit_runs(line) != []

    def __iter__(self) -> Iterator[tuple[int, bytes | None, object]]:
        """(position, raw line or None, None or a decoded row or the BadRecord decoding it raised)."""
        if self.task.fmt == "jsonl":
            data = self.read()
            may_overflow = long_digit_runs(data) != []
            for i, line in enumerate(data.split(b"\n")):
                if not line.strip():
                    continue
                self.long_digits = may_overflow and self.line_may_overflow(line)
                yield i, line, None
        else:
            for n, row in sources.iter_rows(self.task):
                try:
                    rec = sources.decode_row(row)
                except BadRecord as e:
                    rec = e
                self.current_row = row
                yield n, None, rec

    def position(self, n: int) -> tuple[str, int, tuple[int, int, int]]:
        """("line", line number, order) for JSON Lines; ("record", record number, order) for rows."""
        if self.task.fmt != "jsonl":
            return "record", n, (self.file_index, 0, n)
        if self._base_line is None:
            self._base_line = sources.lines_before(self.task.url, self._begin) if self._begin else 0
        return "line", self._base_line + n + 1, (self.file_index, self._begin, n)


def source_record(task: ReadTask, file_index: int, n: int) -> tuple[str, int, tuple, str, bool]:
    """Read record `n` of a task again, for a dead letter found after the shuffle (rare: a record too large).

    Returns (position kind, position, order, text, truncated).
    """
    records = _TaskRecords(task, file_index)
    if task.fmt == "jsonl":
        lines = records.read().split(b"\n")
        if n < len(lines):
            kind, position, order = records.position(n)
            text, truncated = record_text(lines[n])
            return kind, position, order, text, truncated
    else:
        for k, _raw, _rec in records:
            if k == n:
                kind, position, order = records.position(n)
                text, truncated = record_text(sources.row_text(records.current_row))
                return kind, position, order, text, truncated
    raise LookupError(f"record {n} of {task.label} is gone: the source changed during the export")


class ExtractSeries(beam.PTransform):
    """Read tasks (their indexes) -> (series key, RunRef); tagged outputs dead_letters and stats."""

    def __init__(
        self,
        request,
        tasks: list[ReadTask],
        file_order: dict[str, int],
        name_budget: int,
        spill: str,
        pool: str | None = None,
    ):
        """`pool`: a multi-process local run's pool folder for the read tasks (`transforms.pool`)."""
        super().__init__()
        self._request = request
        self._tasks = tasks
        self._file_order = file_order
        self._name_budget = name_budget
        self._spill = spill
        self._pool = pool

    def expand(self, task_indexes):
        return task_indexes | "ParseValidateSelect" >> beam.ParDo(
            _ParseTask(
                self._request,
                self._tasks,
                self._file_order,
                self._name_budget,
                self._spill,
                self._pool,
            )
        ).with_outputs(DEAD_LETTERS, STATS, main="series")
