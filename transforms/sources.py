"""Reading the event store: plan read tasks over the source files, and iterate the records of one task.

A plain JSON Lines file is cut into byte ranges so that several workers (and bundles) share a large file; a
range holds the lines that start inside it. Gzip, Avro and Parquet files are read whole, one task each.
Records come out as (position, raw) pairs: JSON Lines give the raw line bytes, Avro and Parquet give dicts
whose free-key objects are decoded from their JSON text (transforms/schemas/README.md).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from transforms import storage
from transforms.records import UNPARSEABLE, WRONG_TYPE, BadRecord, decode_json

FORMATS = ("jsonl", "avro", "parquet")
RANGE_BYTES = 16 * 1024 * 1024
_JSON_TEXT_FIELDS = ("profile", "deviceInfo", "eventProps", "profileProps")


def format_of(url: str) -> str | None:
    """The source format a file's extension implies, or None."""
    name = url.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for ext, fmt in ((".jsonl", "jsonl"), (".json", "jsonl"), (".ndjson", "jsonl"), (".avro", "avro")):
        if name.endswith(ext):
            return fmt
    if name.endswith(".parquet"):
        return "parquet"
    return None


@dataclass(frozen=True)
class ReadTask:
    """One unit of reading: bytes [start, end) of a plain JSON Lines file, or a whole file (end = -1)."""

    url: str
    fmt: str
    start: int = 0
    end: int = -1

    @property
    def label(self) -> str:
        if self.end < 0:
            return os.path.basename(self.url)
        return f"{os.path.basename(self.url)}[{self.start}:{self.end}]"


def plan_reads(
    files: list[storage.SourceFile], forced_format: str | None, range_bytes: int = RANGE_BYTES
) -> list[ReadTask]:
    tasks = []
    for f in files:
        fmt = forced_format or format_of(f.url)
        if fmt == "jsonl" and not f.url.lower().endswith(".gz") and f.size > range_bytes:
            # As few ranges as fit range_bytes, of equal size (within a byte): workers given the same number of
            # tasks get the same amount of data, with no short last range per file landing on one of them.
            n = -(-f.size // range_bytes)
            tasks.extend(ReadTask(f.url, fmt, f.size * i // n, f.size * (i + 1) // n) for i in range(n))
        else:
            tasks.append(ReadTask(f.url, fmt))
    return tasks


def read_lines(task: ReadTask) -> tuple[bytes, int]:
    """The bytes of the whole lines that start in the task's range, and the offset they start at.

    A UTF-8 byte order mark at the start of a file (as Windows tools write) is not part of the first record.
    """
    if task.end < 0:
        if task.url.lower().endswith(".gz"):
            with storage.open_read(task.url) as raw, gzip.GzipFile(fileobj=raw) as f:
                return _without_bom(f.read(), 0)
        with storage.open_read(task.url) as f:
            return _without_bom(f.read(), 0)
    begin = max(task.start - 1, 0)
    data = storage.read_range(task.url, begin, task.end)
    if task.start > 0:
        # The line that starts at task.start is the one after the first newline at or after task.start - 1.
        nl = data.find(b"\n")
        if nl < 0:
            return b"", task.end  # one line runs through the whole range: it started before it
        data = data[nl + 1 :]
        begin += nl + 1
    if data and not data.endswith(b"\n"):
        # The last line runs past the range's end: read on to its newline.
        tail = []
        pos = task.end
        step = 1 << 16
        while True:
            more = storage.read_range(task.url, pos, pos + step)
            if not more:
                break
            nl = more.find(b"\n")
            if nl >= 0:
                tail.append(more[: nl + 1])
                break
            tail.append(more)
            pos += len(more)
            step = min(step * 2, 1 << 24)
        data = data + b"".join(tail)
    if task.start == 0:  # after reading on: a range may be shorter than the mark
        data, begin = _without_bom(data, 0)
    return data, begin


_BOM = b"\xef\xbb\xbf"


def _without_bom(data: bytes, begin: int) -> tuple[bytes, int]:
    return (data[len(_BOM) :], begin + len(_BOM)) if data.startswith(_BOM) else (data, begin)


def lines_before(url: str, offset: int) -> int:
    """How many lines a plain file has before byte `offset` (for line numbers in dead letters)."""
    count = 0
    pos = 0
    step = 1 << 24
    while pos < offset:
        chunk = storage.read_range(url, pos, min(pos + step, offset))
        if not chunk:
            break
        count += chunk.count(b"\n")
        pos += len(chunk)
    return count


def iter_rows(task: ReadTask) -> Iterator[tuple[int, Any]]:
    """(record number from 1, row dict or BadRecord) for an Avro or Parquet file."""
    if task.fmt == "avro":
        import fastavro

        with storage.open_read(task.url) as f:
            for n, row in enumerate(fastavro.reader(f), 1):
                yield n, row
    elif task.fmt == "parquet":
        import pyarrow.parquet as pq

        with storage.open_read(task.url) as f:
            n = 0
            for batch in pq.ParquetFile(f).iter_batches(batch_size=8192):
                for row in batch.to_pylist():
                    n += 1
                    yield n, row
    else:
        raise ValueError(f"not a row format: {task.fmt}")


def decode_row(row: dict) -> dict:
    """An Avro or Parquet row as the JSON record it stands for: free-key objects decoded from JSON text."""
    rec = {k: v for k, v in row.items() if v is not None}
    for field in _JSON_TEXT_FIELDS:
        v = rec.get(field)
        if isinstance(v, str):
            try:
                rec[field] = decode_json(v.encode("utf-8"))
            except BadRecord as e:
                raise BadRecord(
                    e.reason if e.reason != UNPARSEABLE else UNPARSEABLE, f"{field}: {e.detail}"
                ) from None
        elif isinstance(v, bytes):
            raise BadRecord(WRONG_TYPE, f"{field} must be JSON text, not bytes")
    return rec


def row_text(row: Any) -> str:
    """A row as JSON text, for the dead letters."""
    return orjson.dumps(row, default=str, option=orjson.OPT_NON_STR_KEYS).decode("utf-8")
