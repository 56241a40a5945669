"""Sorted runs: how records travel from the parse stage to the writers without going through the shuffle.

Each read task sorts the records it found for each series and writes them, one series after the other, to
its run file in a spill location (a local temporary folder on the DirectRunner, `--temp_location` on
Dataflow). Only a small `RunRef` per series goes through the GroupByKey (the file, and where the series'
frames are in it); the writer of a series merges its runs, streaming. Moving bulk bytes through the shuffle
is what made the multi-process DirectRunner slower than one process (every byte passes through the runner
process) and what held the whole export in memory at once.

A run is a sequence of frames; a frame holds up to FRAME_RECORDS records as four arrays and a blob:
    <count:u32> <has_created:u8> ts[count]:i64 pos[count]:i64 lengths[count]:u32 [created[count]:i64]
    [id lengths[count]:u32 ids blob] lines blob
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import gc
import heapq
import os
import struct
import sys
from array import array
from collections.abc import Iterator
from itertools import accumulate, chain, islice, repeat
from typing import NamedTuple

from transforms import storage

FRAME_RECORDS = 8192
SPILL_DIR = "ctexport-spill"
_HEAD = struct.Struct("<IB")
_NO_CREATED = -1
_new_tuple = tuple.__new__  # builds a Record from a tuple in C, without NamedTuple's Python-level _make


class RunRef(NamedTuple):
    """The sorted records of one series from one read task: a section of the task's run file."""

    url: str
    task: int  # the read task's index: runs merge in task order, so ties resolve the same way every time
    count: int
    nbytes: int  # the data lines' bytes
    offset: int = 0  # where the series' frames start in the run file
    length: int = -1  # the bytes of its frames; -1: to the end of the file
    # What the writer needs of the whole series besides its records, for this run's part: CSV header keys or
    # Parquet types of events (see series.py), merged over the runs so that no writer reads a series twice.
    meta: object = None


class Record(NamedTuple):
    ts: int
    line: bytes
    pos: int  # the record's index in its read task
    created: int | None = None
    object_id: str | None = None


def _frame(records: list[tuple], profiles: bool) -> tuple[bytes, int]:
    ts, lines, pos, created, ids = zip(*records, strict=True)
    parts = [
        _HEAD.pack(len(records), 1 if profiles else 0),
        array("q", ts).tobytes(),
        array("q", pos).tobytes(),
        array("I", map(len, lines)).tobytes(),
    ]
    if profiles:
        parts.append(array("q", [_NO_CREATED if c is None else c for c in created]).tobytes())
        encoded = [i.encode("utf-8") for i in ids]
        parts.append(array("I", map(len, encoded)).tobytes())
        parts.append(b"".join(encoded))
    blob = b"".join(lines)
    parts.append(blob)
    return b"".join(parts), len(blob)


class RunFile:
    """A read task's run file, written one sorted series after the other."""

    def __init__(self, path: str):
        self.path = path
        self._f = open(path, "wb")
        self._size = 0

    def add(self, records: list[tuple], profiles: bool) -> tuple[int, int, int]:
        """Append a series' sorted records (Records, or plain tuples of their fields).

        Returns (offset, length) of its frames and the bytes of its data lines."""
        offset = self._size
        nbytes = 0
        for s in range(0, len(records), FRAME_RECORDS):
            frame, n = _frame(records[s : s + FRAME_RECORDS], profiles)
            self._f.write(frame)
            self._size += len(frame)
            nbytes += n
        return offset, self._size - offset, nbytes

    def add_columns(
        self, columns: EventColumns, base: int
    ) -> Iterator[tuple[tuple[str, str], int, int, int, int]]:
        """Sort an events task's records (`EventColumns`) by series, then (ts, line, position), in Arrow, and
        append each series as `add` would. `base`: the task's part of a record's position (task << 32).

        Yields (series key, records, offset, length, data bytes) per series, in key order."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        n = len(columns.ts)
        if not n:
            return
        tagged = pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(columns.tagged)])
        number = pc.shift_right(tagged, 32)
        table = pa.table(
            {
                "series": number,
                "ts": pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(columns.ts)]),
                "line": pa.Array.from_buffers(
                    pa.large_binary(), n, [None, pa.py_buffer(columns.ends), pa.py_buffer(columns.blob)]
                ),
                "tagged": tagged,  # within a series, the record's index in its task: the last tie-break
            }
        )
        order = pc.sort_indices(
            table,
            sort_keys=[
                ("series", "ascending"),
                ("ts", "ascending"),
                ("line", "ascending"),
                ("tagged", "ascending"),
            ],
        )
        ts = _int64_view(table["ts"].chunk(0).take(order))
        pos = _int64_view(pc.bit_wise_or(pc.bit_wise_and(tagged, 0xFFFFFFFF), base).take(order))
        lines = table["line"].chunk(0).take(order)
        del table
        ends = memoryview(lines.buffers()[1]).cast("q")
        blob = memoryview(lines.buffers()[2])
        lengths = pc.binary_length(lines).cast(pa.uint32())
        lengths = memoryview(lengths.buffers()[1]).cast("I")[lengths.offset : lengths.offset + n]
        counts = np.bincount(number.to_numpy(), minlength=len(columns.series)).tolist()
        starts = [0, *accumulate(counts)]
        write = self._f.write
        for key in sorted(columns.series):
            k = columns.series[key] >> 32
            a, b = starts[k], starts[k + 1]
            offset = self._size
            for s in range(a, b, FRAME_RECORDS):
                e = min(b, s + FRAME_RECORDS)
                for part in (_HEAD.pack(e - s, 0), ts[s:e], pos[s:e], lengths[s:e], blob[ends[s] : ends[e]]):
                    write(part)
                self._size += _HEAD.size + 20 * (e - s) + ends[e] - ends[s]
            yield key, b - a, offset, self._size - offset, ends[b] - ends[a]

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> RunFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EventColumns:
    """The events records of one read task as they are found: the series each belongs to, its ts, its data
    line and its index in the task, in columns. Adding a record copies its line into one buffer and makes no
    Python object that outlives it; `RunFile.add_columns` sorts and writes them all in Arrow, with no Python
    object per record."""

    __slots__ = ("series", "blob", "ends", "ts", "tagged")

    def __init__(self):
        self.series: dict[tuple[str, str], int] = {}  # series key -> its number << 32 (see `tag`)
        self.blob = bytearray()  # the data lines, end to end
        self.ends = array("q", [0])  # where each line ends in `blob`, after a 0: Arrow's offsets
        self.ts = array("q")
        self.tagged = array("q")  # per record: its series' tag | its index in the task (< 2**32)

    def tag(self, key: tuple[str, str]) -> int:
        """The series' number << 32, numbering a new series."""
        tag = self.series.get(key)
        if tag is None:
            tag = self.series[key] = len(self.series) << 32
        return tag

    def add(self, key: tuple[str, str], ts: int, line: bytes, index: int) -> None:
        """The parse stage's fast loop does this inline."""
        self.blob += line
        self.ends.append(len(self.blob))
        self.ts.append(ts)
        self.tagged.append(self.tag(key) | index)


def _int64_view(values) -> memoryview:
    """The values of an int64 Arrow array with no nulls, as a memoryview of int64 (no copy)."""
    return memoryview(values.buffers()[1]).cast("q")[values.offset : values.offset + len(values)]


@contextlib.contextmanager
def paused_gc():
    """Pause the cyclic GC: parsing and writing make and hold millions of tuples, bytes and dicts that form no
    cycles, and each full collection would walk them all."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _libc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_malloc_trim = _libc_trim()


def use_system_allocator() -> None:
    """Arrow allocates from glibc's malloc, not from the mimalloc its wheels use by default, unless
    ARROW_DEFAULT_MEMORY_POOL names a pool. Writing the largest Parquet series of the 1M benchmark (50 MB of
    data lines) raised a worker's RSS by 97 MB with mimalloc against 67 MB with malloc, for the same 68 MB
    peak of Arrow allocations: the JSON reader's growing buffers leave mimalloc holding pages. Called where a
    worker starts a stage; buffers allocated before stay with their own pool."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    import pyarrow as pa

    if pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())


def release_memory() -> None:
    """Give freed memory back to the system after a task or a series: glibc's malloc and Arrow's pool keep
    freed pages for reuse, so a worker would hold the peak of every task it ran on top of the next one's."""
    pa = sys.modules.get("pyarrow")
    if pa is not None:
        pa.default_memory_pool().release_unused()
    if _malloc_trim is not None:
        _malloc_trim(0)


def _read_exact(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise OSError(f"run file truncated: wanted {n} bytes, got {len(data)}")
    return data


# A span of timestamps [lo, hi): a writer shard of a large series reads only its span of every run.
Span = tuple[int, int]
ALL: Span = (-(2**63), 2**63 - 1)


def read_run(ref: RunRef, span: Span = ALL) -> Iterator[Record]:
    """The records of a run (those with ts in `span`), in order, reading one frame at a time."""
    for frame in _frames(ref, span):
        yield from frame


def read_run_into(ref: RunRef, records: list, span: Span = ALL) -> None:
    """Append the records of a run (those with ts in `span`) to `records`, a frame at a time."""
    for frame in _frames(ref, span):
        records.extend(frame)


class _Frame(NamedTuple):
    """A frame as read: its arrays as bytes, and [first, last), the records in the span asked for."""

    count: int
    ts: array
    pos: bytes
    lengths: array
    created: bytes | None
    id_lengths: array | None
    ids: bytes | None
    blob: bytes | None  # None when no record is in the span (or lines were not wanted): not read
    first: int
    last: int


def _read_frames(ref: RunRef, span: Span = ALL, lines: bool = True) -> Iterator[_Frame]:
    """The frames of a run. A frame with no record in `span` (or any frame, without `lines`) is read without
    its lines: the reader seeks past them."""
    lo, hi = span
    with storage.open_read(ref.url) as f:
        if ref.offset:
            f.seek(ref.offset)
        left = ref.length
        while left:
            head = f.read(_HEAD.size)
            if not head:
                if left > 0:
                    raise OSError(f"run file {ref.url} truncated: {left} bytes of a run missing")
                return
            count, has_created = _HEAD.unpack(head)
            ts = array("q")
            ts.frombytes(_read_exact(f, 8 * count))
            pos = _read_exact(f, 8 * count)
            lengths = array("I")
            lengths.frombytes(_read_exact(f, 4 * count))
            used = len(head) + 20 * count
            created = id_lengths = ids = None
            if has_created:
                created = _read_exact(f, 8 * count)
                id_lengths = array("I")
                id_lengths.frombytes(_read_exact(f, 4 * count))
                ids = _read_exact(f, sum(id_lengths))
                used += 12 * count + len(ids)
            size = sum(lengths)
            first = 0 if lo <= ts[0] else bisect.bisect_left(ts, lo)
            last = count if ts[-1] < hi else bisect.bisect_left(ts, hi)
            blob = None
            if lines and first < last:
                blob = _read_exact(f, size)
            elif size:
                f.seek(size, os.SEEK_CUR)
            left -= used + size
            yield _Frame(count, ts, pos, lengths, created, id_lengths, ids, blob, first, last)


def _frames(ref: RunRef, span: Span = ALL) -> Iterator:
    """Each frame of a run as an iterable of its Records in `span`."""
    for fr in _read_frames(ref, span):
        if fr.blob is None:
            continue
        first, last = fr.first, fr.last
        pos = array("q")
        pos.frombytes(fr.pos)
        ends = list(accumulate(fr.lengths))
        starts = chain((0,), ends)
        if fr.created is None:
            lines = [fr.blob[a:b] for a, b in zip(starts, ends, strict=False)]
            records = map(
                _new_tuple, repeat(Record), zip(fr.ts, lines, pos, repeat(None), repeat(None), strict=False)
            )
            yield records if (first, last) == (0, fr.count) else islice(records, first, last)
            continue
        created = array("q")
        created.frombytes(fr.created)
        ids, o = [], 0
        for n in fr.id_lengths:
            ids.append(fr.ids[o : o + n].decode("utf-8"))
            o += n
        frame = []
        for k, (a, b) in enumerate(zip(starts, ends, strict=False)):
            if first <= k < last:
                c = created[k]
                frame.append(Record(fr.ts[k], fr.blob[a:b], pos[k], None if c == _NO_CREATED else c, ids[k]))
        yield frame


class SortedLines(NamedTuple):
    """An events series' data lines in series order, without moving them: `lines` holds them in the order
    read (one contiguous Arrow large_binary array, the only copy), `order` the indexes of `lines` in series
    order, `positions` the records' positions in series order. Each line is written followed by `line_end`."""

    lines: object
    order: object
    positions: object
    line_end: bytes
    # Per run, in the order read (task order): (its RunRef, the index of its first record in the span, how
    # many it holds there).
    sections: tuple = ()
    ts: object = None  # the records' epoch seconds, in the order read

    def sizes(self):
        """Each record's written size (line and line end), in series order, as an int64 Arrow array."""
        import pyarrow.compute as pc

        lengths = pc.binary_length(self.lines).take(self.order).cast("int64")
        return pc.add(lengths, len(self.line_end)) if self.line_end else lengths

    def in_order(self, start: int = 0, stop: int | None = None):
        """Records start..stop-1 of the series as written (lines with their ends), as one large_binary array."""
        import pyarrow as pa
        import pyarrow.compute as pc

        stop = len(self.order) if stop is None else stop
        lines = self.lines.take(self.order.slice(start, stop - start))
        if self.line_end:
            lines = pc.binary_join_element_wise(
                lines, pa.scalar(b"", pa.large_binary()), pa.scalar(self.line_end, pa.large_binary())
            )
        return lines


def sorted_lines(refs: list[RunRef], line_end: bytes, span: Span = ALL) -> SortedLines:
    """An events series' records with ts in `span`, sorted in Arrow's C++ with no Python object per record.
    The lines are read once into one buffer and never copied whole again: the writer takes them in order a
    piece at a time. For a series small enough to hold."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ts, pos, lengths = array("q"), array("q"), array("I")
    blob = bytearray()  # grows in place (realloc of a large block remaps, it does not copy)
    sections = []
    for ref in sorted(refs, key=lambda r: r.task):
        base, start_of_span, held = 0, None, len(ts)
        for fr in _read_frames(ref, span):
            if fr.created is not None:
                raise ValueError("sorted_lines reads events runs only")
            base += fr.count
            if fr.blob is None:
                continue
            first, last = fr.first, fr.last
            if start_of_span is None:
                start_of_span = base - fr.count + first
            ts.extend(fr.ts[first:last])
            pos.frombytes(fr.pos[8 * first : 8 * last])
            taken = fr.lengths[first:last]
            lengths.extend(taken)
            start = sum(fr.lengths[:first])
            blob += memoryview(fr.blob)[start : start + sum(taken)]
        sections.append((ref, start_of_span or 0, len(ts) - held))
    n = len(ts)
    offsets = pc.cumulative_sum(
        pa.Array.from_buffers(pa.uint32(), n, [None, pa.py_buffer(lengths)]).cast("int64")
    )
    offsets = pa.concat_arrays([pa.array([0], pa.int64()), offsets])
    table = pa.table(
        {
            "ts": pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(ts)]),
            "line": pa.Array.from_buffers(
                pa.large_binary(), n, [None, offsets.buffers()[1], pa.py_buffer(blob)]
            ),
            "pos": pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(pos)]),
        }
    )
    # (ts, line, position): the order a list of Records sorts into, identical records in source order.
    order = pc.sort_indices(
        table, sort_keys=[("ts", "ascending"), ("line", "ascending"), ("pos", "ascending")]
    )
    line, positions = table["line"].chunk(0), table["pos"].chunk(0).take(order)
    return SortedLines(line, order, positions, line_end, tuple(sections), table["ts"].chunk(0))


def sorted_blob(refs: list[RunRef], span: Span = ALL) -> tuple[object, object, object]:
    """An events series' records with ts in `span` as one view of their data lines in series order,
    each followed by a newline; with their epoch seconds and positions in that order. The lines get their
    ends in the order read and are then taken in order, the first copy let go before the second is made."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lines = sorted_lines(refs, b"\n", span)
    order, ts, positions = lines.order, lines.ts.take(lines.order), lines.positions
    if not len(order):
        return memoryview(b""), ts, positions
    empty, end = pa.scalar(b"", pa.large_binary()), pa.scalar(b"\n", pa.large_binary())
    ended = pc.binary_join_element_wise(lines.lines, empty, end)
    del lines
    return values_bytes(ended.take(order)), ts, positions


def values_bytes(lines) -> memoryview:
    """The bytes of a large_binary array's values, end to end (a view: no copy)."""
    offsets = memoryview(lines.buffers()[1]).cast("q")
    return memoryview(lines.buffers()[2])[offsets[lines.offset] : offsets[lines.offset + len(lines)]]


def shard_spans(refs: list[RunRef], shard_bytes: int) -> list[tuple[Span, int]]:
    """Cut a series into spans of timestamps holding about `shard_bytes` of data lines each, in order; with
    the bytes each holds.

    Reads only the runs' timestamps and line lengths. Records of one timestamp stay in one span, so a span
    can be larger (one timestamp holding more than shard_bytes) and there can be fewer spans than asked."""
    import pyarrow as pa
    import pyarrow.compute as pc

    total = sum(r.nbytes for r in refs)
    n = -(-total // shard_bytes)
    if n <= 1:
        return [(ALL, total)]
    ts, lengths = [], []
    for ref in sorted(refs, key=lambda r: r.task):
        for fr in _read_frames(ref, lines=False):
            ts.append(pa.Array.from_buffers(pa.int64(), fr.count, [None, pa.py_buffer(fr.ts)]))
            lengths.append(pa.Array.from_buffers(pa.uint32(), fr.count, [None, pa.py_buffer(fr.lengths)]))
    ts, lengths = pa.chunked_array(ts, pa.int64()), pa.chunked_array(lengths, pa.uint32())
    order = pc.sort_indices(ts)
    ts = ts.take(order).combine_chunks()
    ends = pc.cumulative_sum(lengths.take(order).cast(pa.int64())).combine_chunks()
    ts_view = memoryview(ts.buffers()[1]).cast("q")[ts.offset : ts.offset + len(ts)]
    ends_view = memoryview(ends.buffers()[1]).cast("q")[ends.offset : ends.offset + len(ends)]
    starts = [0]  # the index of each span's first record
    for k in range(1, n):
        i = bisect.bisect_left(ends_view, k * total // n)  # the record where the k-th share is reached
        if i < len(ts_view):
            i = bisect.bisect_left(ts_view, ts_view[i])  # all of its timestamp in the next span
            if i > starts[-1]:
                starts.append(i)
    bounds = [ALL[0], *(ts_view[i] for i in starts[1:]), ALL[1]]
    ends_at = [*starts[1:], len(ts_view)]
    return [
        ((lo, hi), ends_view[e - 1] - (ends_view[b - 1] if b else 0))
        for lo, hi, b, e in zip(bounds[:-1], bounds[1:], starts, ends_at, strict=True)
    ]


def merged(refs: list[RunRef], span: Span = ALL) -> Iterator[Record]:
    """All records of a series (in `span`) in series order (ts, then line), merging its sorted runs."""
    refs = sorted(refs, key=lambda r: r.task)
    if len(refs) == 1:
        return read_run(refs[0], span)
    # Records compare by (ts, line, position): the position orders identical records the same way every time.
    return heapq.merge(*(read_run(r, span) for r in refs))


def delete_runs(spill: str) -> None:
    """Remove a run's spill folder (local) or objects (gs://)."""
    if storage.is_gcs(spill):
        store = storage.open_storage(spill)
        for o in store.list(""):
            store.delete(o.name)
        return
    import shutil

    shutil.rmtree(spill, ignore_errors=True)


def delete_stale_runs(temp_root: str, run_prefix: str) -> None:
    """Remove the spill folders that earlier attempts of this run left (killed before they could clean up)."""
    if storage.is_gcs(temp_root):
        store = storage.open_storage(f"{temp_root}/{SPILL_DIR}")
        for o in store.list(run_prefix):
            store.delete(o.name)
        return
    import glob
    import shutil

    for folder in glob.glob(
        os.path.join(glob.escape(os.path.join(temp_root, SPILL_DIR)), glob.escape(run_prefix) + "*")
    ):
        shutil.rmtree(folder, ignore_errors=True)


def local_path(spill: str, name: str) -> str | None:
    """Where to write a run file directly, when the spill location is a local folder."""
    if storage.is_gcs(spill):
        return None
    os.makedirs(spill, exist_ok=True)
    return os.path.join(spill, name)
