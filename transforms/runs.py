"""Sorted runs: how records travel from the parse stage to the writers without going through the shuffle.

Each read task sorts the records it found for a series and writes them to a run file in a spill location
(a local temporary folder on the DirectRunner, `--temp_location` on Dataflow). Only a small `RunRef` goes
through the GroupByKey; the writer of a series merges its runs, streaming. Moving bulk bytes through the
shuffle is what made the multi-process DirectRunner slower than one process (every byte passes through the
runner process) and what held the whole export in memory at once.

A run file is a sequence of frames; a frame holds up to FRAME_RECORDS records as four arrays and a blob:
    <count:u32> <has_created:u8> ts[count]:i64 pos[count]:i64 lengths[count]:u32 [created[count]:i64]
    [id lengths[count]:u32 ids blob] lines blob
"""

from __future__ import annotations

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
    """A run file of one series from one read task."""

    url: str
    task: int  # the read task's index: runs merge in task order, so ties resolve the same way every time
    count: int
    nbytes: int  # the data lines' bytes


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


def write_run(path: str, records: list[tuple], profiles: bool) -> int:
    """Write sorted records (Records, or plain tuples of their fields) to a local file; returns the bytes of
    their data lines."""
    nbytes = 0
    with open(path, "wb") as f:
        for s in range(0, len(records), FRAME_RECORDS):
            frame, n = _frame(records[s : s + FRAME_RECORDS], profiles)
            f.write(frame)
            nbytes += n
    return nbytes


def _read_exact(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise OSError(f"run file truncated: wanted {n} bytes, got {len(data)}")
    return data


def read_run(url: str) -> Iterator[Record]:
    """The records of a run file, in order, reading one frame at a time."""
    for frame in _frames(url):
        yield from frame


def read_run_into(url: str, records: list) -> None:
    """Append the records of a run file to `records` (a frame at a time, without a generator per record)."""
    for frame in _frames(url):
        records.extend(frame)


def _frames(url: str) -> Iterator:
    """Each frame of a run file as an iterable of its Records."""
    with storage.open_read(url) as f:
        while True:
            head = f.read(_HEAD.size)
            if not head:
                return
            count, has_created = _HEAD.unpack(head)
            ts = array("q")
            ts.frombytes(_read_exact(f, 8 * count))
            pos = array("q")
            pos.frombytes(_read_exact(f, 8 * count))
            lengths = array("I")
            lengths.frombytes(_read_exact(f, 4 * count))
            created = ids = None
            if has_created:
                created = array("q")
                created.frombytes(_read_exact(f, 8 * count))
                id_lengths = array("I")
                id_lengths.frombytes(_read_exact(f, 4 * count))
                blob = _read_exact(f, sum(id_lengths))
                ids, o = [], 0
                for n in id_lengths:
                    ids.append(blob[o : o + n].decode("utf-8"))
                    o += n
            blob = _read_exact(f, sum(lengths))
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


def merged(refs: list[RunRef]) -> Iterator[Record]:
    """All records of a series in series order (ts, then line), merging its sorted runs."""
    refs = sorted(refs, key=lambda r: r.task)
    if len(refs) == 1:
        return read_run(refs[0].url)
    # Records compare by (ts, line, position): the position orders identical records the same way every time.
    return heapq.merge(*(read_run(r.url) for r in refs))


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
