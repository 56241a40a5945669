"""Write one series: sort it, cut it into files of at most max_file_bytes as stored, upload them.

Files are rolled by our own writer (DESIGN.md: `fileio.WriteToFiles` cannot roll at a byte limit nor produce
the contract's names). Every decision depends only on the sorted series, so a retried bundle or a re-run writes
the same objects under the same names, byte for byte.

Rolling rule, for the README: records are taken in series order and a file is closed before the record that
would take it past the limit. For gzip the stored size is known only after compression, so the writer keeps an
upper bound (bytes already compressed plus zlib's worst case for what is pending) and flushes the compressor to
learn the exact size when the bound says the record might not fit. Parquet files are written with a row count
estimated from the series' bytes per row and rewritten with fewer rows in the rare case they come out too large.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import hashlib
import heapq
import logging
import os
import shutil
import tempfile
import zlib
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam
import orjson
from apache_beam import pvalue

from transforms import naming, runs
from transforms.formats.base import EVENTS, PROFILES, Item, SeriesContext
from transforms.formats.json import JsonEncoder
from transforms.formats.values import EVENT_OBJECTS
from transforms.formats.xml import PreEncodedXml
from transforms.pool import WorkPool
from transforms.records import TOO_LARGE
from transforms.series import DEAD_LETTERS, NAMESPACE, STATS, DeadLetter, source_record
from transforms.storage import crc32c_b64, open_storage

log = logging.getLogger("ctexport")

GZIP_LEVEL = 6
_FEED_BYTES = 1 << 18
PARQUET_GROUP_ROWS = 20_000
# A series up to this many bytes of data lines is sorted in memory; a larger one is merged as a stream.
IN_MEMORY_SERIES_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Chunk:
    """A finished file in the spool: its records are series[first:first + count]."""

    path: str
    size: int
    first: int
    count: int
    xml_replaced: int


def _deflate_bound(n: int) -> int:
    # zlib's compressBound, plus room for the gzip trailer, a sync-flush marker and the final block.
    return n + (n >> 12) + (n >> 14) + (n >> 25) + 64


class _TextFile:
    """One output file being filled: plain or gzip, with an exact size or a safe upper bound."""

    def __init__(self, path: str, header: bytes, gzip: bool):
        self.path = path
        self._f = open(path, "wb")
        self._gz = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31) if gzip else None
        self._buf: list[bytes] = []
        self._buf_len = 0
        self._emitted = 0  # bytes written to the file
        self._pending = 0  # gzip: bytes fed to the compressor since its last flush
        self.count = 0
        self._append(header)

    def _append(self, data: bytes) -> None:
        self._buf.append(data)
        self._buf_len += len(data)
        if self._buf_len >= _FEED_BYTES:
            self._drain()

    def _drain(self) -> None:
        if not self._buf:
            return
        data = b"".join(self._buf)
        self._buf.clear()
        self._buf_len = 0
        if self._gz is None:
            self._f.write(data)
            self._emitted += len(data)
        else:
            out = self._gz.compress(data)
            self._f.write(out)
            self._emitted += len(out)
            self._pending += len(data)

    def bound_with(self, extra: int) -> int:
        """An upper bound of the stored size if `extra` more uncompressed bytes were added and it closed."""
        if self._gz is None:
            return self._emitted + self._buf_len + extra
        return self._emitted + _deflate_bound(self._pending + self._buf_len + extra)

    def settle(self) -> bool:
        """Flush the compressor so the bound becomes tight; False when there was nothing to gain."""
        if self._gz is None or (self._pending == 0 and self._buf_len == 0):
            return False
        self._drain()
        out = self._gz.flush(zlib.Z_SYNC_FLUSH)
        self._f.write(out)
        self._emitted += len(out)
        self._pending = 0
        return True

    def add(self, data: bytes) -> None:
        self._append(data)
        self.count += 1

    def close(self, footer: bytes) -> int:
        self._append(footer)
        self._drain()
        if self._gz is not None:
            out = self._gz.flush(zlib.Z_FINISH)
            self._f.write(out)
            self._emitted += len(out)
        self._f.close()
        return self._emitted

    def discard(self) -> None:
        self._f.close()
        os.unlink(self.path)


def _single_size(header: bytes, data: bytes, footer: bytes, gzip: bool) -> int:
    raw = header + data + footer
    if not gzip:
        return len(raw)
    c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return len(c.compress(raw) + c.flush())


def roll_text(
    items: Iterable[Item], encoder, gzip: bool, max_bytes: int, spool: str
) -> Iterator[Chunk | int]:
    """Yield the series' files as `Chunk`s, and the index of each record too large for any file alone."""
    if not gzip:
        yield from _roll_plain(items, encoder, max_bytes, spool)
        return
    header, footer = encoder.header(), encoder.footer()
    cur: _TextFile | None = None
    first = 0
    replaced_at_open = 0
    n_files = 0
    for i, item in enumerate(items):
        before = encoder.replaced_chars
        data = encoder.encode(item)
        size = len(data) + len(footer)
        if (
            cur is not None
            and cur.bound_with(size) > max_bytes
            and not (cur.settle() and cur.bound_with(size) <= max_bytes)
        ):
            yield Chunk(cur.path, cur.close(footer), first, cur.count, before - replaced_at_open)
            cur = None
        if cur is None:
            if (
                _deflate_bound(len(header) + size) > max_bytes
                and _single_size(header, data, footer, gzip) > max_bytes
            ):
                encoder.replaced_chars = before
                yield i
                continue
            cur = _TextFile(os.path.join(spool, f"{n_files}.part"), header, gzip)
            n_files += 1
            first = i
            replaced_at_open = before
            if cur.bound_with(size) > max_bytes:
                # Fits only by the exact size, not by the bound: a file of its own.
                cur.add(data)
                yield Chunk(cur.path, cur.close(footer), first, 1, encoder.replaced_chars - replaced_at_open)
                cur = None
                continue
        cur.add(data)
    if cur is not None:
        yield Chunk(cur.path, cur.close(footer), first, cur.count, encoder.replaced_chars - replaced_at_open)


def _roll_plain(items: Iterable[Item], encoder, max_bytes: int, spool: str) -> Iterator[Chunk | int]:
    """Uncompressed text: sizes are exact, so the greedy cut is plain arithmetic (the hot loop of a JSON export)."""
    header, footer = encoder.header(), encoder.footer()
    tail = len(footer)
    if isinstance(encoder, JsonEncoder):
        yield from _roll_json(items, header, max_bytes, spool)
        return
    encode = encoder.encode
    f = None
    buf: list[bytes] = []
    size = count = first = n_files = replaced_at_open = 0
    for i, item in enumerate(items):
        before = encoder.replaced_chars
        data = encode(item)
        n = len(data)
        if f is not None and size + n + tail > max_bytes:
            buf.append(footer)
            f.write(b"".join(buf))
            f.close()
            yield Chunk(f.name, size + tail, first, count, before - replaced_at_open)
            f = None
        if f is None:
            if len(header) + n + tail > max_bytes:
                encoder.replaced_chars = before
                yield i
                continue
            f = open(os.path.join(spool, f"{n_files}.part"), "wb")
            n_files += 1
            buf = [header]
            size, count, first, replaced_at_open = len(header), 0, i, before
        buf.append(data)
        size += n
        count += 1
        if len(buf) >= 4096:
            f.write(b"".join(buf))
            buf.clear()
    if f is not None:
        buf.append(footer)
        f.write(b"".join(buf))
        f.close()
        yield Chunk(f.name, size + tail, first, count, encoder.replaced_chars - replaced_at_open)


def _roll_json(items: Iterable, header: bytes, max_bytes: int, spool: str) -> Iterator[Chunk | int]:
    """JSON: a record is its data line and a newline, so a file is the header and its lines joined."""
    lines: list[bytes] = []
    size = first = n_files = 0
    h = len(header)

    def flush() -> Chunk:
        path = os.path.join(spool, f"{n_files}.part")
        with open(path, "wb") as f:
            f.write(header)
            f.write(b"\n".join(lines))
            f.write(b"\n")
        return Chunk(path, size, first, len(lines), 0)

    if isinstance(items, list):
        total = h + sum(map(len, (item.line for item in items))) + len(items)
        if items and total <= max_bytes:  # the whole series fits one file: no need to cut
            lines = [item.line for item in items]
            size, first = total, 0
            yield flush()
            return
    for i, item in enumerate(items):
        n = len(item.line) + 1
        if lines and size + n > max_bytes:
            yield flush()
            n_files += 1
            lines = []
        if not lines:
            if h + n > max_bytes:
                yield i
                continue
            size, first = h, i
        lines.append(item.line)
        size += n
    if lines:
        yield flush()


# Records written per take from the sorted lines: a piece is copied in order, joined with its line ends and
# written, so a series' lines are held once plus one piece.
_PIECE_RECORDS = 8192


def roll_encoded(
    series: runs.SortedLines,
    header: bytes,
    footer: bytes,
    max_bytes: int,
    spool: str,
    piece: int = _PIECE_RECORDS,
) -> Iterator[Chunk | int]:
    """Uncompressed files of encoded records: each is the header, the next records in series order and the
    footer, cut where the greedy rule of `_roll_plain` cuts. Yields the index of each record too large for any
    file alone."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(series.order)
    ends = pa.concat_arrays([pa.array([0], pa.int64()), pc.cumulative_sum(series.sizes())])
    offsets = memoryview(ends.buffers()[1]).cast("q")[ends.offset : ends.offset + n + 1]
    room = max_bytes - len(header) - len(footer)  # for the records of one file
    i = n_files = 0
    while i < n:
        start = offsets[i]
        j = bisect.bisect_right(offsets, start + room, i + 1, n + 1) - 1  # records i..j-1 fit together
        if j == i:  # record i alone does not fit
            yield i
            i += 1
            continue
        path = os.path.join(spool, f"{n_files}.part")
        with open(path, "wb") as f:
            f.write(header)
            for k in range(i, j, piece):
                f.write(runs.values_bytes(series.in_order(k, min(k + piece, j))))
            f.write(footer)
        yield Chunk(path, len(header) + offsets[j] - start + len(footer), i, j - i, 0)
        n_files += 1
        i = j


class ArrowRows(NamedTuple):
    """A sorted series already converted: its Arrow table of the series' schema, a row a record."""

    table: object

    def __len__(self) -> int:
        return self.table.num_rows


def roll_parquet(
    items: Sequence[Item] | ArrowRows,
    ctx: SeriesContext,
    compression: str,
    max_bytes: int,
    spool: str,
    types=None,
) -> Iterator[Chunk | int]:
    """Parquet files of at most max_bytes: rows per file estimated from bytes per row, checked after writing.

    types: the whole series' property types (`parquet.merge_types`), when known; else read from `items`."""
    import pyarrow.parquet as pq

    from transforms.formats.parquet import schema_of, series_schema, to_table

    if isinstance(items, ArrowRows):
        schema, whole = items.table.schema, items.table
    else:
        schema, whole = series_schema(ctx, items) if types is None else schema_of(ctx, types), None
    codec = None if compression == "none" else compression

    def rows(lo: int, hi: int):
        return whole.slice(lo, hi - lo) if whole is not None else to_table(ctx, schema, items[lo:hi])

    def write(path: str, lo: int, hi: int) -> int:
        with pq.ParquetWriter(path, schema, compression=codec or "none", write_statistics=True) as w:
            for s in range(lo, hi, PARQUET_GROUP_ROWS):
                w.write_table(rows(s, min(s + PARQUET_GROUP_ROWS, hi)))
        return os.path.getsize(path)

    n = len(items)
    i = 0
    n_files = 0
    per_row: float | None = None
    if n > PARQUET_GROUP_ROWS:
        probe = os.path.join(spool, "probe.part")
        per_row = write(probe, 0, PARQUET_GROUP_ROWS) / PARQUET_GROUP_ROWS
        os.unlink(probe)
    while i < n:
        path = os.path.join(spool, f"{n_files}.part")
        count = n - i if per_row is None else max(1, min(n - i, int(max_bytes * 0.95 / per_row)))
        while True:
            size = write(path, i, i + count)
            if size <= max_bytes:
                break
            if count == 1:
                break
            count = max(1, int(count * max_bytes / size * 0.95))
        if size > max_bytes:  # one row alone does not fit
            os.unlink(path)
            yield i
            i += 1
            continue
        per_row = size / count
        yield Chunk(path, size, i, count, 0)
        n_files += 1
        i += count


def latest_versions(records: list) -> tuple[list, int]:
    """Profiles: the latest version of each objectId (greatest updatedAt, then greatest data line), in series
    order. Returns those records and how many older versions were dropped."""
    best: dict[str, object] = {}
    for r in records:
        seen = best.get(r.object_id)
        if seen is None or (r.ts, r.line) > (seen.ts, seen.line):
            best[r.object_id] = r
    latest = sorted(best.values())  # by (ts, line, position)
    return latest, len(records) - len(latest)


@dataclass(frozen=True)
class SeriesOptions:
    """What the writer needs of the request."""

    kind: str
    fmt: str
    compression: str
    max_file_bytes: int
    request_id: str
    run_ts: str
    database_id: str
    json_header: bool
    csv_formula_guard: bool

    @property
    def ext(self) -> str:
        return naming.extension(self.fmt, self.compression)


def write_series(
    key: tuple[str, str],
    items: Iterable[Item],
    opts: SeriesOptions,
    upload,
    scan=None,
    name_of=None,
    meta=None,
    spool_root: str | None = None,
) -> Iterator[tuple[str, dict] | tuple[str, int]]:
    """Encode, roll and upload one sorted series.

    Yields ("file", info) for each object written and ("too_large", index in items) for records that cannot fit
    a file alone. `upload(name, path)` stores a spool file under its object name (and may move it there).
    `items` may be a stream; then `scan()` gives the series once more, in any order, for the CSV header or the
    Parquet schema. `name_of(i)` names file i (default: the data name with index i). `meta`: the whole
    series' CSV keys per object (a dict) or Parquet types (`parquet.merge_types`), when known already: then
    neither reads the series for them. `spool_root`: the local folder for the files being written (default:
    the system's temporary folder).
    """
    event_name, date = key
    kind = PROFILES if opts.kind == "profiles" else EVENTS
    ctx = SeriesContext(kind, event_name, opts.csv_formula_guard, opts.json_header)
    spool = tempfile.mkdtemp(prefix="ctexport-", dir=spool_root)
    try:
        if opts.fmt == "parquet":
            rows = items if isinstance(items, ArrowRows) else list(items)
            chunks = roll_parquet(rows, ctx, opts.compression, opts.max_file_bytes, spool, meta)
        else:
            from transforms.formats.values import text_encoder

            if opts.fmt == "xml":  # encoded before the shuffle (series.py)
                encoder = PreEncodedXml(ctx)
            elif opts.fmt == "csv" and meta is not None:
                from transforms.formats.csv import CsvEncoder

                encoder = CsvEncoder(ctx, (), keys=meta)
            else:
                encoder = text_encoder(opts.fmt, ctx, scan() if scan is not None else items)
            if isinstance(items, runs.SortedLines):
                chunks = roll_encoded(items, encoder.header(), encoder.footer(), opts.max_file_bytes, spool)
            else:
                chunks = roll_text(items, encoder, opts.compression == "gzip", opts.max_file_bytes, spool)
        index = 0
        for chunk in chunks:
            if isinstance(chunk, int):
                yield "too_large", chunk
                continue
            name = (
                name_of(index)
                if name_of is not None
                else naming.data_name(
                    opts.request_id, opts.run_ts, event_name, date, index, opts.database_id, opts.ext
                )
            )
            crc = crc32c_b64(chunk.path)
            upload(name, chunk.path)
            with contextlib.suppress(FileNotFoundError):  # upload may have moved it
                os.unlink(chunk.path)
            index += 1
            yield (
                "file",
                {
                    "name": name,
                    "event": event_name,
                    "date": date,
                    "index": index - 1,
                    "bytes": chunk.size,
                    "records": chunk.count,
                    "crc32c": crc,
                    "xml_replaced_chars": chunk.xml_replaced,
                },
            )
    finally:
        shutil.rmtree(spool, ignore_errors=True)


# A series of more data than this is written in shards, spans of its timestamps, by several workers at once;
# each shard is then small enough for the in-memory writers.
SHARD_BYTES = IN_MEMORY_SERIES_BYTES
SHARD_FILES = "shard_files"
# After writing a shard of more data than this, a worker gives its freed memory back to the system (each time
# costs ~10-20 ms: the pages are faulted in again for the next series).
RELEASE_AFTER_BYTES = 16 * 1024 * 1024


class Shard(NamedTuple):
    """The part of a series one writer call writes: its records with ts in `span`, file names index..."""

    key: tuple[str, str]
    refs: list
    index: int
    count: int
    span: tuple[int, int]
    nbytes: int  # its records' data lines
    meta: object = None  # a Parquet events series in several shards: the whole series' property types


class _PlanShards(beam.DoFn):
    """(series key, [RunRef]) -> its shards: one, or for a large events series in a sharded format, spans of
    its timestamps holding about SHARD_BYTES of data each. Depends only on the data, never on the workers."""

    def __init__(self, request, opts: SeriesOptions, shard_bytes: int):
        self._request = request
        self._opts = opts
        self._shard_bytes = shard_bytes

    def setup(self):
        runs.use_system_allocator()

    def process(self, element):
        key, refs = element
        refs = sorted(refs, key=lambda r: r.task)
        total = sum(r.nbytes for r in refs)
        spans = [(runs.ALL, total)]
        o = self._opts
        # Every format shards. CSV shards share the series' header, from the runs' meta; Parquet shards share
        # its schema, from the types read here.
        whole_known = o.fmt != "csv" or all(r.meta is not None for r in refs)
        types = None
        if o.kind == "events" and whole_known and total > self._shard_bytes:
            spans = runs.shard_spans(refs, self._shard_bytes)
            log.info("%s %s: %d shards", key[0], key[1], len(spans))
            if o.fmt == "parquet":
                types = _series_types(key, refs, spans)
        for i, (span, nbytes) in enumerate(spans):
            yield Shard(key, refs, i, len(spans), span, nbytes, types)


def _series_types(key: tuple[str, str], refs: list, spans: list) -> dict:
    """A Parquet events series' property types, read a span at a time."""
    from transforms.formats import parquet

    ctx = SeriesContext(EVENTS, key[0])
    parts = (parquet.blob_types(ctx, runs.sorted_blob(refs, span)[0]) for span, _ in spans)
    return functools.reduce(parquet.merge_types, parts)


def balanced_shares(shards: Iterable[Shard], n: int) -> list[list[Shard]]:
    """The shards in `n` shares of about equal data, each share largest first: the greedy longest-first
    rule (each shard, largest first, to the share with the least data so far), so no share holds more than
    the others' mean plus one shard. Ties go by series key and index: the shares depend only on the data."""
    shares: list[list[Shard]] = [[] for _ in range(n)]
    heap = [(0, i) for i in range(n)]
    for shard in sorted(shards, key=_largest_first):
        size, i = heapq.heappop(heap)
        shares[i].append(shard)
        heapq.heappush(heap, (size + shard.nbytes, i))
    return shares


class _SpreadShards(beam.PTransform):
    """Hand the shards to the writers. Beam's multi-process local runner gives a stage's input to its
    `workers` processes round-robin, one key after a GroupByKey at a time, whatever each key holds. After a
    Reshuffle (random keys) the busier of two processes got a share of the 1M-event benchmark's series that
    was a median 9% (one time in ten 22%) above half (shuffling those series' sizes 2,000 times), and the
    other then waits. So there the shards are collected (small: their runs' references) and put in order,
    largest first, under one key per process. With a `pool` (a local spill folder) every process gets the
    whole list and writes the shards it claims first (`transforms.pool`): the longest-first rule, applied
    as the writers come free, so a writer slowed down by its core or by costly series takes fewer. Without
    one, each gets a fixed share of the data (`balanced_shares`). Any other runner balances work itself, and
    gets a Reshuffle."""

    def __init__(self, workers: int, pool: str | None = None):
        super().__init__()
        self._workers = workers
        self._pool = pool

    def expand(self, shards):
        if self._workers < 2:
            return shards | beam.Reshuffle()
        n = self._workers
        return (
            shards
            | "All" >> beam.Map(lambda shard: (None, shard))
            | "Collect" >> beam.GroupByKey()
            | "Share" >> beam.FlatMap(_shares, n, self._pool is not None)
            | "OneSharePerWorker" >> beam.GroupByKey()
            | "Shards" >> beam.FlatMap(lambda kv: [s for share in kv[1] for s in share])
        )


def _shares(element: tuple[None, Iterable[Shard]], n: int, pooled: bool) -> Iterator[tuple[int, list[Shard]]]:
    if pooled:
        ordered = sorted(element[1], key=_largest_first)
        log.info("writers: %d shards, %s bytes, to whichever is free", len(ordered), f"{_bytes(ordered):,}")
        return ((i, ordered) for i in range(n))
    shares = balanced_shares(element[1], n)
    log.info("writers' shares: %s bytes", " / ".join(f"{_bytes(share):,}" for share in shares))
    return enumerate(shares)


def _largest_first(shard: Shard) -> tuple:
    return (-shard.nbytes, shard.key, shard.index)


def _bytes(shards: list[Shard]) -> int:
    return sum(s.nbytes for s in shards)


def shard_claim(shard: Shard) -> str:
    """The name under which a writer claims a shard in a pool: a digest of its series key and index."""
    return hashlib.blake2b(orjson.dumps([*shard.key, shard.index]), digest_size=16).hexdigest()


class _WriteSeries(beam.DoFn):
    """Shard -> file infos; records too large for a file go to the dead letters. The files of a series in
    several shards go out on SHARD_FILES under temporary names, to be numbered by `_NumberShardFiles`.
    `pool`: every writer is handed every shard and writes those it claims first (`_SpreadShards`)."""

    def __init__(
        self,
        request,
        opts: SeriesOptions,
        tasks: list,
        file_order: dict[str, int],
        spill: str,
        pool: str | None = None,
    ):
        self._request = request
        self._opts = opts
        self._tasks = tasks
        self._file_order = file_order
        self._spill = spill
        self._pool_folder = pool
        self._files = beam.metrics.Metrics.counter(NAMESPACE, "files_written")
        self._records = beam.metrics.Metrics.counter(NAMESPACE, "records_written")

    def setup(self):
        r = self._request
        self._store = open_storage(r.output, tmp_group=naming.run_prefix(r.request_id, r.run_ts))
        runs.use_system_allocator()
        runs.release_memory()  # what parsing left in this worker: the writer's peak comes on top
        self._pool = None if self._pool_folder is None else WorkPool(self._pool_folder)
        # Files being written go under a local spill folder, which the next attempt of a killed run removes.
        self._spool_root = runs.local_path(self._spill, "spool")
        if self._spool_root is not None:
            os.makedirs(self._spool_root, exist_ok=True)

    def process(self, shard: Shard):
        if self._pool is not None and not self._pool.claim(shard_claim(shard)):
            return []  # another writer has it
        with runs.paused_gc():
            out = list(self._write(shard))
        if shard.nbytes > RELEASE_AFTER_BYTES:
            runs.release_memory()  # before the next series' peak comes on top of this one's leftovers
        return out

    def _write(self, shard: Shard):
        key, refs, span = shard.key, shard.refs, shard.span
        superseded = 0
        positions = array("q")
        scan = None
        size = shard.nbytes
        # The series' CSV keys when the runs carry them, or a sharded Parquet series' types.
        meta = shard.meta if shard.meta is not None else self._series_meta(refs)
        if self._opts.kind == "profiles":
            records = []
            for ref in refs:
                runs.read_run_into(ref, records)
            items, superseded = latest_versions(records)
            positions.extend([r.pos for r in items])
            del records
        elif (
            self._opts.fmt in ("json", "xml")
            and self._opts.compression != "gzip"
            and size <= IN_MEMORY_SERIES_BYTES
        ):
            # Uncompressed JSON or XML: a file is a slice of the sorted lines, found and written in Arrow.
            items = runs.sorted_lines(refs, b"\n" if self._opts.fmt == "json" else b"", span)
            positions = _ArrowPositions(items.positions)
        elif (table := self._parquet_table(key, refs, span, meta)) is not None:
            items, positions = table
        elif self._opts.fmt == "parquet" or size <= IN_MEMORY_SERIES_BYTES:
            records = []
            for ref in refs:
                runs.read_run_into(ref, records, span)
            records.sort()  # by (ts, line, position); the runs are sorted already, so Timsort merges them
            items = records  # a Record has the ts, line and created an encoder reads
            positions.extend([r[2] for r in records])
        else:  # a large series: merge the runs as a stream
            items = _merged_items(refs, positions, span)
            if meta is None:  # the header pass reads the runs once more
                scan = functools.partial(_scan_runs, refs, span)
        name_of = None
        if shard.count > 1:
            r = self._request
            name_of = functools.partial(
                naming.shard_part_name, r.request_id, r.run_ts, key[0], key[1], shard.index
            )
        written = 0
        for kind, value in write_series(
            key, items, self._opts, self._store.move_file, scan, name_of, meta, self._spool_root
        ):
            if kind == "file":
                self._files.inc()
                self._records.inc(value["records"])
                written += value["records"]
                yield (
                    value
                    if shard.count == 1
                    else pvalue.TaggedOutput(SHARD_FILES, (key, (shard.index, value)))
                )
            else:
                yield pvalue.TaggedOutput(DEAD_LETTERS, self._too_large(positions[value]))
        yield pvalue.TaggedOutput(STATS, {"superseded": superseded})
        log.debug(
            "wrote %s %s shard %d/%d: %d records", key[0], key[1], shard.index + 1, shard.count, written
        )

    def _parquet_table(self, key: tuple[str, str], refs: list, span, types):
        """A Parquet events series' table (and its records' positions), read from its lines in series order
        in one pass of Arrow's JSON reader; None when only Python reads them right (`to_table` then does).
        `types`: the whole series' when this is one of its shards."""
        if self._opts.fmt != "parquet" or self._opts.kind != "events":
            return None
        from transforms.formats import parquet

        blob, ts, positions = runs.sorted_blob(refs, span)
        table = parquet.series_table(SeriesContext(EVENTS, key[0]), blob, ts, types)
        del blob  # the table holds what the writer needs
        return None if table is None else (ArrowRows(table), _ArrowPositions(positions))

    def _series_meta(self, refs: list):
        """The whole series' CSV keys or Parquet types, merged from its runs; None when a run has none."""
        if not refs or any(r.meta is None for r in refs):
            return None
        if self._opts.fmt == "csv":
            keys = [set().union(*parts) for parts in zip(*(r.meta for r in refs), strict=True)]
            return dict(zip(EVENT_OBJECTS, keys, strict=True))
        return None

    def _too_large(self, packed_pos: int) -> DeadLetter:
        task = self._tasks[packed_pos >> 32]
        n = packed_pos & 0xFFFFFFFF
        kind, position, order, text, truncated = source_record(task, self._file_order[task.url], n)
        r = self._request
        detail = f"the record alone makes a {r.format} file larger than --max_file_bytes {r.max_file_bytes}"
        return DeadLetter(order, task.url, kind, position, TOO_LARGE, detail, text, truncated, False)


def _scan_runs(refs: list, span=runs.ALL) -> Iterator:
    """Every record of the runs, in no particular order (for the CSV header or the Parquet schema)."""
    for ref in refs:
        yield from runs.read_run(ref, span)


class _NumberShardFiles(beam.DoFn):
    """(series key, [(shard index, file info)]) -> the file infos under their data names: the files of all
    shards of a series numbered 0..n-1 in shard order, each renamed from its temporary name."""

    def __init__(self, request, opts: SeriesOptions):
        self._request = request
        self._opts = opts

    def setup(self):
        r = self._request
        self._store = open_storage(r.output, tmp_group=naming.run_prefix(r.request_id, r.run_ts))

    def process(self, element):
        (event_name, date), parts = element
        o = self._opts
        for n, (_, info) in enumerate(sorted(parts, key=lambda p: (p[0], p[1]["index"]))):
            name = naming.data_name(o.request_id, o.run_ts, event_name, date, n, o.database_id, o.ext)
            self._store.rename(info["name"], name)
            yield {**info, "name": name, "index": n}


class _ArrowPositions:
    """Record positions in series order, as the Arrow array `runs.sorted_lines` gave them."""

    def __init__(self, array):
        self._array = array

    def __getitem__(self, i: int) -> int:
        return self._array[i].as_py()


def _merged_items(refs: list, positions: array, span=runs.ALL) -> Iterator:
    for r in runs.merged(refs, span):
        positions.append(r.pos)
        yield r


class WrittenSeries(NamedTuple):
    files: object  # PCollection of file infos
    dead_letters: object
    stats: object


class WriteSeries(beam.PTransform):
    """Sort each series, roll it into files of at most max_file_bytes and upload them under their names."""

    def __init__(
        self,
        request,
        tasks: list,
        file_order: dict[str, int],
        spill: str,
        shard_bytes: int | None = None,
        workers: int = 0,
        pool: str | None = None,
    ):
        """`spill`: the run's spill folder (the writers' files in the making go under it when it is local).
        `workers`: the worker processes of a multi-process local run, which share the shards
        (`_SpreadShards`); 0 for any other runner. `pool`: their pool folder, when the spill is local."""
        super().__init__()
        self._request = request
        self._tasks = tasks
        self._file_order = file_order
        self._spill = spill
        self._shard_bytes = SHARD_BYTES if shard_bytes is None else shard_bytes
        self._workers = workers
        self._pool = pool

    def expand(self, grouped):
        r = self._request
        opts = SeriesOptions(
            kind=r.export_type,
            fmt=r.format,
            compression=r.compression,
            max_file_bytes=r.max_file_bytes,
            request_id=r.request_id,
            run_ts=r.run_ts,
            database_id=r.database_id,
            json_header=r.json_header,
            csv_formula_guard=r.csv_formula_guard,
        )
        written = (
            grouped
            | "PlanShards" >> beam.ParDo(_PlanShards(r, opts, self._shard_bytes))
            | "SpreadShards" >> _SpreadShards(self._workers, self._pool)
            | "SortRollUpload"
            >> beam.ParDo(
                _WriteSeries(r, opts, self._tasks, self._file_order, self._spill, self._pool)
            ).with_outputs(DEAD_LETTERS, STATS, SHARD_FILES, main="files")
        )
        numbered = (
            written[SHARD_FILES]
            | "GroupShardFiles" >> beam.GroupByKey()
            | "NumberShardFiles" >> beam.ParDo(_NumberShardFiles(r, opts))
        )
        files = (written.files, numbered) | "AllFiles" >> beam.Flatten()
        return WrittenSeries(files, written[DEAD_LETTERS], written[STATS])
