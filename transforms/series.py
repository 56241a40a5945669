"""Parse, validate and select records, keyed by series: one (event name, date), or all profiles.

`ExtractSeries` reads each `ReadTask` in one DoFn call: it decodes and checks every record, keeps those in the
run's window, renders each as its JSON data line, and emits one packed `SeriesBatch` per series per task, so the
shuffle moves a few large byte strings instead of millions of small objects. Bad records leave on the
`dead_letters` output with their reason and source position; each task also emits its counts on `stats`.
"""

from __future__ import annotations

import gc
import logging
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

import apache_beam as beam
from apache_beam import pvalue

from transforms import sources
from transforms.naming import PROFILES_NAME
from transforms.records import BadRecord, Good, RecordChecker, decode_json, long_digit_runs
from transforms.sources import ReadTask
from transforms.windows import LocalTime

log = logging.getLogger("ctexport")
NAMESPACE = "ctexport"
DEAD_LETTERS = "dead_letters"
STATS = "stats"
RECORD_TEXT_LIMIT = 64 * 1024

# Counts a task reports; finalize adds them up. read = exported + superseded + out_of_scope + bad.
STAT_KEYS = ("read", "selected", "out_of_scope", "bad", "unplaced", "superseded")


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


class SeriesBatch(tuple):
    """(ts, created, positions, lines, object_ids) of one series from one task, packed for the shuffle.

    ts/created/positions are `array('q')` bytes; created is b"" for events; positions hold
    task_index << 32 | record index in the task; lines is the data lines joined by b"\\n" (a compact JSON line
    never holds a raw newline); object_ids is a list of str for profiles, else None.
    """

    __slots__ = ()


def pack(ts: array, created: array | None, pos: array, lines: list[bytes], ids: list[str] | None) -> tuple:
    return (
        ts.tobytes(),
        created.tobytes() if created is not None else b"",
        pos.tobytes(),
        b"\n".join(lines),
        ids,
    )


def unpack(batch: tuple) -> tuple[array, array | None, array, list[bytes], list[str] | None]:
    ts_b, created_b, pos_b, blob, ids = batch
    ts = array("q")
    ts.frombytes(ts_b)
    created = None
    if created_b:
        created = array("q")
        created.frombytes(created_b)
    pos = array("q")
    pos.frombytes(pos_b)
    return ts, created, pos, blob.split(b"\n") if ts else [], ids


NO_CREATED = -1  # createdAt absent, in the packed created array


class _ParseTask(beam.DoFn):
    def __init__(self, request, tasks: list[ReadTask], file_order: dict[str, int], name_budget: int):
        self._request = request
        self._tasks = tasks
        self._file_order = file_order
        self._name_budget = name_budget
        self._read = beam.metrics.Metrics.counter(NAMESPACE, "records_read")
        self._bad = beam.metrics.Metrics.counter(NAMESPACE, "bad_records")

    def setup(self):
        r = self._request
        run_date = LocalTime(r.timezone).date(r.run_epoch)
        self._profile_key = (PROFILES_NAME, run_date)
        self._checker = RecordChecker(
            r.export_type,
            r.window,
            frozenset(r.events) if r.events is not None else None,
            r.timezone,
            run_date,
            self._name_budget,
        )

    def process(self, task_index: int):
        task = self._tasks[task_index]
        gc_was_enabled = gc.isenabled()
        gc.disable()  # millions of short-lived dicts: the cyclic GC would walk them all for nothing
        try:
            yield from self._process(task_index, task)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _process(self, task_index: int, task: ReadTask):
        profiles = self._request.export_type == "profiles"
        acc: dict[tuple[str, str], list] = {}
        latest: dict[str, tuple] = {}  # profiles: objectId -> (updated, line, created, pos)
        stats = dict.fromkeys(STAT_KEYS, 0)
        dead: list[DeadLetter] = []
        check = self._checker.check
        base = task_index << 32
        records = self._records(task, task_index)
        for n, raw, rec in records:
            stats["read"] += 1
            try:
                if rec is None:
                    rec = decode_json(raw, records.long_digits)
                elif type(rec) is BadRecord:
                    raise rec
                good = check(rec)
            except BadRecord as e:
                stats["bad"] += 1
                unplaced = e.placement is None and self._request.window.field is not None
                stats["unplaced"] += unplaced
                dead.append(self._dead_letter(task, records, n, raw, rec, e, unplaced))
                continue
            if good is None:
                stats["out_of_scope"] += 1
                continue
            stats["selected"] += 1
            if profiles:
                prev = latest.get(good.object_id)
                if prev is not None:
                    stats["superseded"] += 1
                    if (prev[0], prev[1]) >= (good.ts, good.line):
                        continue
                latest[good.object_id] = (good.ts, good.line, good.created, base | n)
                continue
            self._add(acc, good, base | n)
        if profiles:
            for oid, (ts, line, created, pos) in latest.items():
                self._add(acc, Good(self._profile_key, ts, created, line, oid), pos)
        self._read.inc(stats["read"])
        self._bad.inc(stats["bad"])
        for key, (ts, created, pos, lines, ids) in acc.items():
            yield key, pack(ts, created, pos, lines, ids)
        for d in dead:
            yield pvalue.TaggedOutput(DEAD_LETTERS, d)
        yield pvalue.TaggedOutput(STATS, stats)
        log.info("read %s: %d records, %d bad, %d series", task.label, stats["read"], stats["bad"], len(acc))

    @staticmethod
    def _add(acc: dict, good: Good, pos: int) -> None:
        slot = acc.get(good.key)
        if slot is None:
            profiles = good.object_id is not None
            slot = acc[good.key] = (
                array("q"),
                array("q") if profiles else None,
                array("q"),
                [],
                [] if profiles else None,
            )
        slot[0].append(good.ts)
        if slot[1] is not None:
            slot[1].append(NO_CREATED if good.created is None else good.created)
            slot[4].append(good.object_id)
        slot[2].append(pos)
        slot[3].append(good.line)

    def _records(self, task: ReadTask, task_index: int) -> _TaskRecords:
        return _TaskRecords(task, self._file_order[task.url])

    def _dead_letter(self, task, records, n, raw, rec, err: BadRecord, unplaced: bool) -> DeadLetter:
        kind, position, order = records.position(n)
        text, truncated = record_text(raw if raw is not None else sources.row_text(records.current_row))
        return DeadLetter(order, task.url, kind, position, err.reason, err.detail, text, truncated, unplaced)


class _TaskRecords:
    """Iterates (index in task, raw bytes or None, decoded row or None) and maps an index to its position."""

    def __init__(self, task: ReadTask, file_index: int):
        self.task = task
        self.file_index = file_index
        self._offsets: list[int] | None = None
        self._base_line: int | None = None
        self._begin = 0
        self.long_digits = True  # the current line may hold a run of 19 digits

    def __iter__(self) -> Iterable[tuple[int, bytes | None, object]]:
        task = self.task
        if task.fmt == "jsonl":
            data, self._begin = sources.read_lines(task)
            self._data = data
            runs = long_digit_runs(data)
            runs.append(len(data) + 1)
            r = 0
            n = 0
            start = 0
            self._line_starts: list[int] = []
            for line in data.split(b"\n"):
                here = start
                start += len(line) + 1
                if not line.strip():
                    continue
                n += 1
                self._line_starts.append(here)
                while runs[r] < here:
                    r += 1
                self.long_digits = runs[r] < start
                yield n, line, None
        else:
            for n, row in sources.iter_rows(task):
                try:
                    rec = sources.decode_row(row)
                except BadRecord as e:
                    rec = e
                self.current_row = row
                yield n, None, rec

    def position(self, n: int) -> tuple[str, int, tuple[int, int]]:
        """("line", line number, order) for JSON Lines; ("record", record number, order) for rows."""
        if self.task.fmt != "jsonl":
            return "record", n, (self.file_index, n)
        offset_in_data = self._line_starts[n - 1]
        if self._base_line is None:
            self._base_line = sources.lines_before(self.task.url, self._begin) if self._begin else 0
        line_no = self._base_line + self._data.count(b"\n", 0, offset_in_data) + 1
        return "line", line_no, (self.file_index, self._begin + offset_in_data)


class ExtractSeries(beam.PTransform):
    """Read tasks (their indexes) -> (series key, SeriesBatch); tagged outputs dead_letters and stats."""

    def __init__(self, request, tasks: list[ReadTask], file_order: dict[str, int], name_budget: int):
        super().__init__()
        self._request = request
        self._tasks = tasks
        self._file_order = file_order
        self._name_budget = name_budget

    def expand(self, task_indexes):
        return task_indexes | "ParseValidateSelect" >> beam.ParDo(
            _ParseTask(self._request, self._tasks, self._file_order, self._name_budget)
        ).with_outputs(DEAD_LETTERS, STATS, main="series")


def source_record(task: ReadTask, file_index: int, n: int) -> tuple[str, int, tuple[int, int], str, bool]:
    """Read record `n` of a task again, for a dead letter found after the shuffle (rare: a record too large).

    Returns (position kind, position, order, text, truncated).
    """
    records = _TaskRecords(task, file_index)
    for k, raw, _rec in records:
        if k == n:
            kind, position, order = records.position(n)
            text, truncated = record_text(raw if raw is not None else sources.row_text(records.current_row))
            return kind, position, order, text, truncated
    raise LookupError(f"record {n} of {task.label} is gone: the source changed during the export")
