"""The "beam built-in" contender: the same events export with Beam's own writers, one record per element.

    python bench/builtin.py --source 'DIR/events-*.jsonl' --start 20261124 --end 20261127 \
        --output OUTDIR --format json|csv|xml|parquet

What a Beam user writes first, on the same in-process DirectRunner (FnApiRunner, built directly as
pipelines/export.py does, to skip Beam 2.77's Prism download attempt), sharing no code with our pipeline (the
validation and the text encoders are bench/baseline.py's, applied per record):

    ReadFromText(bytes) -> FlatMap(parse with orjson, validate, keep ts in [start, end), render the data line)
      json: -> Map(record -> (destination, line))                          -> fileio.WriteToFiles
      xml:  -> Map(record -> (destination, <Event> line))                  -> fileio.WriteToFiles
      csv:  -> CombinePerKey(union of column names per destination) as a side input (AsDict)
            -> Map(record -> (destination, header, row))                   -> fileio.WriteToFiles
      parquet: -> Map(record -> row dict) -> beam.io.WriteToParquet(fixed schema, snappy)

`WriteToFiles(path, destination=(event, date), sink=a TextSink subclass per destination, file_naming=...)`
writes one file per destination and bundle (up to 20 open writers per bundle) and sends the rest through a
GroupByKey into 5 shards per destination. Its sink writes the header on the first record (json: the event
name; csv: the series' header row carried by every element; xml: the declaration and `<Events>`) and the XML
footer on flush. Files are named `<encoded event>-<yyyymmdd>-<i>-of-<n>.<ext>`.

What it does not do, by design (it is what Beam gives): records are not sorted by ts within a series, files
do not roll at --max_file_bytes, names do not follow SPEC section 3 (the index depends on bundling).
Parquet: WriteToParquet writes one set of files with one fixed schema, so there is no split by event or date
(the benchmark counts records per (eventName, date of ts) inside them) and the free-key objects `profile`,
`deviceInfo`, `eventProps` are JSON text columns, not nested structs (a fixed schema cannot hold free keys):
less work than SPEC's Parquet.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import apache_beam as beam
import orjson
import pyarrow as pa
from apache_beam.coders import coders
from apache_beam.io import fileio
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import baseline  # noqa: E402  (bench/baseline.py: validation and encoders, no pipeline code)

OBJECTS = baseline.OBJECTS


def make_runner(options: PipelineOptions):
    """Beam's in-process FnApiRunner, built as pipelines/export.py's make_runner does (no Prism attempt)."""
    options.view_as(StandardOptions).runner = "DirectRunner"
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=info)


class Parse(beam.DoFn):
    """One input line -> (destination, event name, ts, data line) for a good record in the window."""

    def __init__(self, start: int, end: int, prefix: str, suffix: str):
        self.start, self.end, self.prefix, self.suffix = start, end, prefix, suffix

    def setup(self):
        # the baseline's validation, fed one line at a time
        self.ex = baseline.Exporter(self.start, self.end, self.prefix, self.suffix)

    def process(self, line: bytes):
        ex = self.ex
        ex.series.clear()
        ex.block(line)
        for (name, date), recs in ex.series.items():
            ts, data = recs[0]
            yield f"{baseline.encode_name(name)}-{date}", name, ts, data


def naming(ext: str):
    def name(window, pane, shard_index, total_shards, compression, destination):
        return f"{destination}-{shard_index}-of-{total_shards}.{ext}"

    return name


class HeaderSink(fileio.TextSink):
    """Writes bytes elements (their last field); the header before the first, the footer on flush."""

    def __init__(self, header: bytes | None, footer: bytes = b""):
        self.header = header  # None: the element's second field is the header (CSV)
        self.footer = footer

    def open(self, fh):
        self._fh = fh
        self._started = False

    def write(self, record):
        if not self._started:
            self._fh.write(record[1] if self.header is None else self.header)
            self._started = True
        self._fh.write(record[-1])

    def flush(self):
        if self.footer:
            self._fh.write(self.footer)
        self._fh.flush()


def _event_of(destination: str) -> str:
    import re

    encoded = destination.rsplit("-", 1)[0]
    return re.sub(r"(?:%[0-9A-F]{2})+", lambda m: bytes.fromhex(m.group().replace("%", "")).decode(), encoded)


def json_sink(destination: str) -> HeaderSink:
    return HeaderSink(_event_of(destination).encode() + b"\n")


def xml_sink(destination: str) -> HeaderSink:
    return HeaderSink(baseline.XML_HEADER, baseline.XML_FOOTER)


def csv_sink(destination: str) -> HeaderSink:
    return HeaderSink(None)


_TAGS: dict = {}  # XML element tags of profile/deviceInfo keys, per process


def xml_record(rec):
    dest, name, _ts, line = rec
    return dest, baseline.xml_record(baseline.xml_escape(name), line, _TAGS)


def csv_columns(rec):
    d = orjson.loads(rec[3])
    return rec[0], frozenset((o, k) for o in OBJECTS if (obj := d.get(o)) for k in obj)


def union(sets):
    out = set()
    for s in sets:
        out |= s
    return out


def csv_record(rec, headers):
    """(destination, header row, data row) with the destination's columns (the union over its records)."""
    dest, name, ts, line = rec
    header, groups, empty = headers[dest]
    row = baseline.csv_row(name, orjson.loads(line), groups, empty)
    sink = baseline._Rows()
    baseline.csv.writer(sink, lineterminator="\r\n").writerow(row)
    return dest, header, sink[0].encode()


def csv_headers(item):
    """(destination, column set) -> (destination, (header bytes, [(object, keys)], empty cells per object))."""
    dest, cols = item
    groups = [(o, sorted(k for oo, k in cols if oo == o)) for o in OBJECTS]
    sink = baseline._Rows()
    baseline.csv.writer(sink, lineterminator="\r\n").writerow(baseline.csv_header(groups))
    return dest, (sink[0].encode(), groups, {o: [""] * len(keys) for o, keys in groups})


PARQUET_SCHEMA = pa.schema(
    [
        ("ts", pa.timestamp("us", tz="UTC")),
        ("eventName", pa.string()),
        ("profile", pa.string()),
        ("deviceInfo", pa.string()),
        ("eventProps", pa.string()),
    ]
)


def parquet_row(rec):
    _dest, name, ts, line = rec
    d = orjson.loads(line)
    row = {"ts": ts * 1_000_000, "eventName": name}
    for o in OBJECTS:
        obj = d.get(o)
        row[o] = None if not obj else orjson.dumps(obj).decode()
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", required=True, help="comma-separated globs of JSON Lines files")
    ap.add_argument("--start", required=True)
    ap.add_argument("--end", required=True)
    ap.add_argument("--output", required=True, help="a local folder")
    ap.add_argument("--format", choices=["json", "csv", "xml", "parquet"], default="json")
    ap.add_argument("--request_id", default="bench")
    ap.add_argument("--run_timestamp", default="20261128000000")
    ap.add_argument("--database_id", default="W4R-565-5Z4Z")
    args, beam_args = ap.parse_known_args(argv)  # Beam's own flags, e.g. --direct_num_workers 2

    started = time.perf_counter()
    globs = [g for g in args.source.split(",") if g]
    if not any(glob.glob(g) for g in globs):
        print(f"no file matches {args.source}", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    options = PipelineOptions(beam_args)
    # Worker processes (--direct_running_mode multi_processing) import this module's helpers from bench/.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))
    prefix = f"{args.request_id}-{args.run_timestamp}"
    suffix = f"-{args.database_id}.{args.format}"
    parse = Parse(baseline.parse_time(args.start), baseline.parse_time(args.end), prefix, suffix)
    fmt = args.format
    with beam.Pipeline(runner=make_runner(options), options=options) as p:
        reads = [
            p | f"Read{i}" >> beam.io.ReadFromText(g, coder=coders.BytesCoder()) for i, g in enumerate(globs)
        ]
        lines = reads[0] if len(reads) == 1 else reads | beam.Flatten()
        recs = lines | "Parse" >> beam.ParDo(parse)
        if fmt == "parquet":
            _ = (
                recs
                | "ToRow" >> beam.Map(parquet_row)
                | beam.io.WriteToParquet(
                    os.path.join(args.output, "events"),
                    PARQUET_SCHEMA,
                    codec="snappy",
                    file_name_suffix=".parquet",
                )
            )
        else:
            if fmt == "json":
                out = recs | "Encode" >> beam.Map(lambda r: (r[0], r[3] + b"\n"))
                sink = json_sink
            elif fmt == "xml":
                out = recs | "Encode" >> beam.Map(xml_record)
                sink = xml_sink
            else:
                headers = (
                    recs
                    | "Columns" >> beam.Map(csv_columns)
                    | "Union" >> beam.CombinePerKey(union)
                    | "Header" >> beam.Map(csv_headers)
                )
                out = recs | "Encode" >> beam.Map(csv_record, beam.pvalue.AsDict(headers))
                sink = csv_sink
            _ = out | fileio.WriteToFiles(
                args.output, destination=lambda e: e[0], sink=sink, file_naming=naming(fmt)
            )
    print(f"done in {time.perf_counter() - started:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
