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

import contextlib
import gc
import heapq
import os
import struct
from array import array
from collections.abc import Iterator
from itertools import accumulate, chain, repeat
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

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> RunFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


def _read_exact(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise OSError(f"run file truncated: wanted {n} bytes, got {len(data)}")
    return data


def read_run(ref: RunRef) -> Iterator[Record]:
    """The records of a run, in order, reading one frame at a time."""
    for frame in _frames(ref):
        yield from frame


def read_run_into(ref: RunRef, records: list) -> None:
    """Append the records of a run to `records` (a frame at a time, without a generator per record)."""
    for frame in _frames(ref):
        records.extend(frame)


def _frames(ref: RunRef) -> Iterator:
    """Each frame of a run as an iterable of its Records."""
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
            left -= len(head)
            count, has_created = _HEAD.unpack(head)
            ts = array("q")
            ts.frombytes(_read_exact(f, 8 * count))
            pos = array("q")
            pos.frombytes(_read_exact(f, 8 * count))
            lengths = array("I")
            lengths.frombytes(_read_exact(f, 4 * count))
            left -= 20 * count
            created = ids = None
            if has_created:
                created = array("q")
                created.frombytes(_read_exact(f, 8 * count))
                id_lengths = array("I")
                id_lengths.frombytes(_read_exact(f, 4 * count))
                blob = _read_exact(f, sum(id_lengths))
                left -= 12 * count + len(blob)
                ids, o = [], 0
                for n in id_lengths:
                    ids.append(blob[o : o + n].decode("utf-8"))
                    o += n
            blob = _read_exact(f, sum(lengths))
            left -= len(blob)
            o = 0
            if created is None:
                ends = list(accumulate(lengths))
                lines = [blob[a:b] for a, b in zip(chain((0,), ends), ends, strict=False)]
                yield map(
                    _new_tuple, repeat(Record), zip(ts, lines, pos, repeat(None), repeat(None), strict=False)
                )
            else:
                frame = []
                for k in range(count):
                    n = lengths[k]
                    c = created[k]
                    frame.append(
                        Record(ts[k], blob[o : o + n], pos[k], None if c == _NO_CREATED else c, ids[k])
                    )
                    o += n
                yield frame


def sorted_lines(refs: list[RunRef], line_end: bytes) -> tuple:
    """An events series' data lines in series order, each followed by `line_end`, as one Arrow large_binary
    array, and the records' positions in that order: the runs decoded, sorted and joined in Arrow's C++, with
    no Python object per record. For a series small enough to hold; profiles runs are not read this way."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ts, lines, pos = [], [], []
    for ref in sorted(refs, key=lambda r: r.task):
        for t, line, p in _arrow_frames(ref):
            ts.append(t)
            lines.append(line)
            pos.append(p)
    if not lines:
        return pa.array([], pa.large_binary()), pa.array([], pa.int64())
    table = pa.table(
        {"ts": pa.chunked_array(ts), "line": pa.chunked_array(lines), "pos": pa.chunked_array(pos)}
    )
    del ts, lines, pos
    # (ts, line, position): the order a list of Records sorts into, identical records in source order.
    order = pc.sort_indices(table, sort_keys=[("ts", "ascending"), ("line", "ascending"), ("pos", "ascending")])
    positions = table["pos"].take(order).combine_chunks()
    lines = table["line"].take(order)
    del table  # and with it the runs' bytes: at most two copies of the series' lines are held at once
    if line_end:
        lines = pc.binary_join_element_wise(
            lines, pa.scalar(b"", pa.large_binary()), pa.scalar(line_end, pa.large_binary())
        )
    if lines.num_chunks != 1:
        lines = lines.combine_chunks()
    else:
        lines = lines.chunk(0)
    return lines, positions


def _arrow_frames(ref: RunRef) -> Iterator[tuple]:
    """Each frame of an events run as Arrow arrays (ts, lines, positions), over one read of the run."""
    import pyarrow as pa
    import pyarrow.compute as pc

    with storage.open_read(ref.url) as f:
        if ref.offset:
            f.seek(ref.offset)
        data = f.read() if ref.length < 0 else _read_exact(f, ref.length)
    buf = pa.py_buffer(data)
    o = 0
    while o < len(data):
        count, has_created = _HEAD.unpack_from(data, o)
        if has_created:
            raise ValueError("sorted_lines reads events runs only")
        o += _HEAD.size
        ts = pa.Array.from_buffers(pa.int64(), count, [None, buf.slice(o, 8 * count)])
        pos = pa.Array.from_buffers(pa.int64(), count, [None, buf.slice(o + 8 * count, 8 * count)])
        lengths = pa.Array.from_buffers(pa.uint32(), count, [None, buf.slice(o + 16 * count, 4 * count)])
        o += 20 * count
        offsets = pa.concat_arrays([pa.array([0], pa.int64()), pc.cumulative_sum(lengths.cast(pa.int64()))])
        size = offsets[-1].as_py()
        if o + size > len(data):
            raise OSError(f"run file {ref.url} truncated: a frame's lines run past its end")
        lines = pa.Array.from_buffers(
            pa.large_binary(), count, [None, offsets.buffers()[1], buf.slice(o, size)]
        )
        o += size
        yield ts, lines, pos


def merged(refs: list[RunRef]) -> Iterator[Record]:
    """All records of a series in series order (ts, then line), merging its sorted runs."""
    refs = sorted(refs, key=lambda r: r.task)
    if len(refs) == 1:
        return read_run(refs[0])
    # Records compare by (ts, line, position): the position orders identical records the same way every time.
    return heapq.merge(*(read_run(r) for r in refs))


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
