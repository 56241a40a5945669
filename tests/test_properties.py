"""Property-based tests (hypothesis): any JSON-like record survives each format's writer and comes back the same
through an independent reader (json, csv, lxml and Python's expat, pyarrow); any bytes at all give either a
record or a bad record with a reason, never a crash; rolled files stay under the limit and keep every record once.

Examples are derandomized (the same on every run) and modest in number, so the suite stays fast; set
CTEXPORT_HYPOTHESIS_EXAMPLES to explore more.
"""

from __future__ import annotations

import functools
import gzip as gzip_module
import io
import json
import os
import pickle
import xml.etree.ElementTree as ElementTree
from datetime import UTC, datetime

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from ctexport.testing.readback import (
    csv_writer_bytes,
    parquet_matches,
    read_csv,
    read_json,
    strict_equal,
    text_matches,
    unzip,
    xml_clean,
    xml_pairs,
)
from transforms.formats.base import EVENTS, PROFILES, Item, SeriesContext
from transforms.formats.parquet import series_schema, to_table
from transforms.formats.values import PROFILE_FIELDS, text_encoder
from transforms.records import BadRecord, RecordChecker, decode_json
from transforms.windows import Window
from transforms.write import SeriesOptions, write_series

EXAMPLES = int(os.environ.get("CTEXPORT_HYPOTHESIS_EXAMPLES", "60"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize="CTEXPORT_HYPOTHESIS_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
GROUPS = ("profile", "deviceInfo", "eventProps")
MAX_TS = 253402300800

# Text: any code point but lone surrogates (they are not UTF-8, so no JSON Lines input can hold them).
TEXT = st.characters(exclude_categories=("Cs",))
KEYS = st.one_of(
    st.text(TEXT, max_size=8),
    st.sampled_from(["a", "b", "xmlns", "xml", "_x", "a.b", "1st", "a b", "ns:k", "", "é", "<k>", "k\x01"]),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(TEXT, max_size=12),
    st.sampled_from(["=1+2", "-x", "@a", "\tt", "\rr", "+", "\ufffe", "\x00", "a\r\nb", '"', ","]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)
OBJECTS = st.dictionaries(KEYS, VALUES, max_size=5)
NAMES = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=16)


@st.composite
def series(draw, max_records: int = 6):
    """(event name, items, records): the data lines of SPEC section 4 for a few JSON-like records."""
    name = draw(NAMES)
    n = draw(st.integers(1, max_records))
    records, items = [], []
    for _ in range(n):
        ts = draw(st.integers(0, MAX_TS - 1))
        rec = {g: draw(OBJECTS) for g in GROUPS if draw(st.booleans())}
        line = {}
        if "profile" in rec:
            line["profile"] = rec["profile"]
        line["ts"] = int(datetime.fromtimestamp(ts, UTC).strftime("%Y%m%d%H%M%S"))
        for g in ("deviceInfo", "eventProps"):
            if g in rec:
                line[g] = rec[g]
        records.append((ts, line))
        items.append(Item(ts, None, orjson.dumps(line)))
    return name, items, records


def encode(fmt: str, ctx: SeriesContext, items: list[Item]) -> bytes:
    enc = text_encoder(fmt, ctx, items)
    return enc.header() + b"".join(enc.encode(i) for i in items) + enc.footer()


@SETTINGS
@given(series(), st.booleans())
def test_json_round_trips(s, header):
    name, items, records = s
    first, got = read_json(encode("json", SeriesContext(EVENTS, name, json_header=header), items), header)
    assert first == (name if header else None)
    assert len(got) == len(records)
    for (_, want), row in zip(records, got, strict=True):
        assert strict_equal(row, want) and list(row) == list(want)


@SETTINGS
@given(series(), st.booleans())
def test_csv_round_trips(s, guard):
    name, items, records = s
    header, rows = read_csv(encode("csv", SeriesContext(EVENTS, name, csv_formula_guard=guard), items))
    columns = ["eventName", "ts"]
    for g in GROUPS:
        keys = sorted({k for _, line in records for k in (line.get(g) or {})})
        columns += [f"{g}.{k}" for k in keys]
    assert header == columns, "the union of the series' keys, sorted within each group"
    assert len(rows) == len(records)
    for (_, line), row in zip(records, rows, strict=True):
        assert text_matches(name, row["eventName"], guard)
        assert row["ts"] == str(line["ts"])
        for col in columns[2:]:
            group, _, key = col.partition(".")
            assert text_matches((line.get(group) or {}).get(key), row[col], guard), (col, row[col])


@SETTINGS
@given(series())
def test_csv_event_rows_are_byte_for_byte_what_csv_writer_writes(s):
    """The encoder joins most rows itself (`CsvEncoder._joined`) and must quote exactly as csv.writer does."""
    name, items, records = s
    columns = [(g, sorted({k for _, line in records for k in (line.get(g) or {})})) for g in GROUPS]
    rows = [["eventName", "ts"] + [f"{g}.{k}" for g, keys in columns for k in keys]]
    for _, line in records:
        rows.append([name, line["ts"]] + [(line.get(g) or {}).get(k) for g, keys in columns for k in keys])
    assert encode("csv", SeriesContext(EVENTS, name), items) == csv_writer_bytes(rows)


@SETTINGS
@given(
    st.lists(st.dictionaries(st.sampled_from(PROFILE_FIELDS), VALUES, max_size=6), min_size=1, max_size=5),
    st.lists(OBJECTS, min_size=5, max_size=5),
)
def test_csv_profile_rows_are_byte_for_byte_what_csv_writer_writes(fields, props):
    lines = []
    for record, obj in zip(fields, props, strict=False):
        line = {f: record[f] for f in PROFILE_FIELDS if f in record}
        if obj:
            line["profileProps"] = obj
        lines.append(line)
    items = [Item(0, None, orjson.dumps(line)) for line in lines]
    keys = sorted({k for line in lines for k in line.get("profileProps", {})})
    rows = [list(PROFILE_FIELDS) + [f"profileProps.{k}" for k in keys]]
    for line in lines:
        rows.append(
            [line.get(f) for f in PROFILE_FIELDS] + [line.get("profileProps", {}).get(k) for k in keys]
        )
    assert encode("csv", SeriesContext(PROFILES, "profiles"), items) == csv_writer_bytes(rows)


@SETTINGS
@given(series())
def test_xml_round_trips_through_libxml2_and_expat(s):
    name, items, records = s
    data = encode("xml", SeriesContext(EVENTS, name), items)
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    for root in (etree.fromstring(data), ElementTree.fromstring(data)):
        assert root.tag == "Events" and len(root) == len(records)
        for (_, line), ev in zip(records, root, strict=True):
            present = [g for g in GROUPS if g in line]
            assert [c.tag for c in ev] == ["ts", "eventName", *present]
            assert ev.findtext("ts") == str(line["ts"]) and ev.findtext("eventName") == xml_clean(name)
            for g in present:
                pairs = xml_pairs(ev.find(g))
                assert [k for k, _ in pairs] == [xml_clean(k) for k in line[g]]
                for (_, text), value in zip(pairs, line[g].values(), strict=True):
                    assert text_matches(value, text, xml=True), (g, value, text)


@SETTINGS
@given(series(max_records=8))
def test_parquet_round_trips_with_one_widened_schema(s):
    name, items, records = s
    ctx = SeriesContext(EVENTS, name)
    schema = series_schema(ctx, items)
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, schema) as w:  # two row groups: both must take the series' schema
        half = len(items) // 2
        for part in (items[:half], items[half:]):
            if part:
                w.write_table(to_table(ctx, schema, part))
    table = pq.read_table(io.BytesIO(buf.getvalue()))
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    rows = table.to_pylist()
    assert len(rows) == len(records)
    for (ts, line), row in zip(records, rows, strict=True):
        assert row["eventName"] == name and row["ts"] == datetime.fromtimestamp(ts, UTC)
        for g in GROUPS:
            assert parquet_matches(line.get(g), row.get(g)), (g, line.get(g), row.get(g))


# Values Arrow's JSON reader can read as we do (integers within 53 bits, no empty object), and some it cannot.
ARROWISH = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**15) + 1, max_value=10**15 - 1),
        st.sampled_from([0.5, -2.25, 1e-7, 3.0, 1e300, 40.780545]),
        st.text(TEXT, max_size=8),
        st.sampled_from(["2024-02-12T10:00:00", "2024-02-12", "12:00"]),  # strings Arrow may see as times
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, min_size=1, max_size=3),
    max_leaves=10,
)


@st.composite
def arrowish_items(draw):
    items = []
    for ts in range(draw(st.integers(1, 8))):
        line = {g: draw(st.dictionaries(KEYS, ARROWISH, max_size=4)) for g in GROUPS if draw(st.booleans())}
        line = {k: v for k, v in line.items() if v} | {"ts": 20261125000000 + ts}
        items.append(Item(1795600000 + ts, None, orjson.dumps(line)))
    return items


def _blob(items: list[Item]) -> bytes:
    """Data lines as the writer hands them to Arrow: each followed by a newline."""
    return b"".join(i.line + b"\n" for i in items)


def _ts(items: list[Item]) -> pa.Array:
    return pa.array([i.ts for i in items], pa.int64())


def _arrow_path_agrees(items: list[Item]) -> bool:
    """Whether the Arrow path read `items`; when it did, it must give the Python path's schema and table, both
    reading a whole series (types inferred in the same pass) and reading lines of a known schema."""
    from transforms.formats import parquet

    ctx = SeriesContext(EVENTS, "Ev")
    python_schema = parquet.schema_of(ctx, parquet._types_in_python(ctx, [i.line for i in items]))
    expected = parquet._table_in_python(ctx, python_schema, items)
    read = parquet._read_in_arrow(_blob(items))
    types = None if read is None else read[0]
    if types is not None:
        assert parquet.schema_of(ctx, types) == python_schema
    table = parquet._events_table_in_arrow(ctx, python_schema, items)
    if table is not None:
        assert table.equals(expected)
    whole = parquet.series_table(ctx, _blob(items), _ts(items))
    if whole is not None:
        assert whole.equals(expected)
    assert (whole is None) == (types is None), "the series path reads what it can type"
    return types is not None and table is not None


@SETTINGS
@given(arrowish_items())
def test_parquet_arrow_path_gives_the_python_paths_schema_and_table(items):
    _arrow_path_agrees(items)


def _numbered(line: bytes, n: int) -> bytes:
    """The data line with its record's number among the properties: no two rows alike, so order shows."""
    data = orjson.loads(line)
    data["eventProps"] = {**data.get("eventProps", {}), "#": n}
    return orjson.dumps(data)


@SETTINGS
@given(arrowish_items(), st.data())
def test_parquet_shard_table_has_the_series_schema_and_the_python_paths_rows(base, data):
    """A shard of a series is read with the whole series' types (merged from its spans' types): its table is
    the one the Python path makes of the shard's records in the series' schema, or None (then Python makes
    it) when the series widened a property of the shard to text."""
    from transforms.formats import parquet

    ctx = SeriesContext(EVENTS, "Ev")
    picked = data.draw(st.lists(st.sampled_from(base), min_size=2, max_size=12))
    everything = [Item(i.ts + n, None, _numbered(i.line, n)) for n, i in enumerate(picked)]
    cut = data.draw(st.integers(1, len(everything) - 1))
    spans = [everything[:cut], everything[cut:]]
    types = functools.reduce(parquet.merge_types, [parquet.blob_types(ctx, _blob(span)) for span in spans])
    schema = parquet.schema_of(ctx, types)
    assert schema == parquet.schema_of(ctx, parquet._types_in_python(ctx, [i.line for i in everything]))
    for span in spans:
        table = parquet.series_table(ctx, _blob(span), _ts(span), types)
        if table is not None:
            assert table.equals(parquet._table_in_python(ctx, schema, span))


def test_parquet_shard_tables_widen_exactly_or_decline():
    """A shard read with its series' types: integers where the series has doubles, fields and nulls the shard
    lacks, read by Arrow; a property the series widens to text, declined (the Python path renders it)."""
    from transforms.formats import parquet

    ctx = SeriesContext(EVENTS, "Ev")

    def shard(this, other):
        items = [Item(7 + n, None, orjson.dumps({"ts": 1, "eventProps": v})) for n, v in enumerate(this)]
        rest = [Item(7, None, orjson.dumps({"ts": 1, "eventProps": v})) for v in other]
        types = parquet.merge_types(
            parquet.blob_types(ctx, _blob(items)), parquet.blob_types(ctx, _blob(rest))
        )
        schema = parquet.schema_of(ctx, types)
        return parquet.series_table(ctx, _blob(items), _ts(items), types), parquet._table_in_python(
            ctx, schema, items
        )

    table, expected = shard(
        [{"a": 1, "l": [1], "s": {"x": 1}}, {"l": [], "s": {"x": 2}}],
        [{"a": 0.5, "b": None, "l": [2.5], "s": {"y": "t"}}, {"b": True}],
    )
    assert table is not None and table.equals(expected)
    assert table.column("eventProps").type.field("a").type == pa.float64()
    assert table.column("eventProps").type.field("s").type.names == ["x", "y"]
    for a, b in (({"x": 1}, "one"), (1e20, "one"), ([1], 2)):
        table, _ = shard([{"a": a}], [{"a": b}])
        assert table is None, f"{a!r} in one shard, {b!r} in another: text in the series, Python reads it"


def test_parquet_series_read_keeps_strings_arrow_takes_for_timestamps():
    """Arrow's inference sees timestamps in some strings; the series is then read again as text, in Arrow."""
    from transforms.formats import parquet

    ctx = SeriesContext(EVENTS, "Ev")
    values = [{"when": "2024-02-12T10:00:00", "n": 1}, {"when": "2024-02-13 11:30:00", "n": 2}]
    items = [Item(5 + n, None, orjson.dumps({"ts": 1, "eventProps": v})) for n, v in enumerate(values)]
    assert pa.types.is_timestamp(parquet._read_in_arrow(_blob(items))[1].column("eventProps").type[0].type)
    table = parquet.series_table(ctx, _blob(items), _ts(items))
    schema = parquet.schema_of(ctx, parquet._types_in_python(ctx, [i.line for i in items]))
    assert table is not None and table.equals(parquet._table_in_python(ctx, schema, items))
    assert table.column("eventProps").to_pylist() == values


# Few keys and plain values: the same property meets another type in another part of the series often.
CLASHING = st.dictionaries(
    st.sampled_from(["a", "b"]),
    st.recursive(
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-3, 3),
            st.sampled_from([2**53 + 1, -(2**60), 0.5, "s"]),
        ),
        lambda inner: (
            st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from(["a", "b"]), inner, max_size=2)
        ),
        max_leaves=4,
    ),
    max_size=2,
)


@SETTINGS
@given(st.lists(st.tuples(OBJECTS | CLASHING, CLASHING), min_size=1, max_size=8), st.data())
def test_parquet_types_of_parts_merge_into_the_types_of_the_whole(objects, data):
    """The parse stage types each run of a series (in Arrow or Python, whichever can); the writer merges them.
    Any cut into parts must give the schema of the whole."""
    from transforms.formats import parquet

    lines = [orjson.dumps({"profile": p, "ts": 20261125000000, "eventProps": e}) for p, e in objects]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(lines)), max_size=3)))
    bounds = [0, *cuts, len(lines)]
    ctx = SeriesContext(EVENTS, "Ev")
    # Each part's types travel pickled, as in a RunRef.
    parts = [
        pickle.loads(pickle.dumps(parquet.lines_types(ctx, lines[a:b])))
        for a, b in zip(bounds, bounds[1:], strict=False)
    ]
    merged = parts[0]
    for part in parts[1:]:
        merged = parquet.merge_types(merged, part)
    assert parquet.schema_of(ctx, merged) == parquet.schema_of(ctx, parquet.lines_types(ctx, lines))


@pytest.mark.parametrize(
    "x", [None, True, 1, 2**53 + 1, 0.5, "s", [], [1], [0.5], [2**60], {}, {"b": 1}, {"b": "x"}, {"b": {}}]
)
def test_parquet_types_of_two_runs_merge_like_one_run(x):
    """Every pair of values a property can take in two runs of a series: merged, the types of the two runs give
    the schema that the two records typed together give."""
    from transforms.formats import parquet

    ctx = SeriesContext(EVENTS, "Ev")
    values = [
        None,
        True,
        1,
        2**53 + 1,
        0.5,
        "s",
        [],
        [1],
        [0.5],
        [2**60],
        {},
        {"b": 1},
        {"b": "x"},
        {"b": {}},
    ]
    for y in values:
        lines = [orjson.dumps({"ts": 1, "eventProps": {"a": v, "c": 1}}) for v in (x, y)]
        parts = [pickle.loads(pickle.dumps(parquet.lines_types(ctx, [line]))) for line in lines]
        whole = parquet.schema_of(ctx, parquet.lines_types(ctx, lines))
        assert parquet.schema_of(ctx, parquet.merge_types(*parts)) == whole, (x, y)


def test_parquet_arrow_path_reads_plain_events_and_declines_the_rest():
    plain = {
        "profile": {"objectId": "o", "phone": None},
        "ts": 20261125000000,
        "eventProps": {"n": 1, "x": 2.5},
    }
    mixed = {"ts": 20261125000001, "eventProps": {"n": 2.0, "x": "text", "when": "2024-02-12T10:00:00"}}
    items = [Item(1, None, orjson.dumps(plain)), Item(2, None, orjson.dumps(mixed))]
    assert _arrow_path_agrees(items[:1]), "plain events take the Arrow path"
    # "x" is a number and a string: widened to string, which only the Python path renders (as JSON text).
    assert not _arrow_path_agrees(items)
    empty = dict(plain, deviceInfo={})
    assert not _arrow_path_agrees([Item(1, None, orjson.dumps(empty))]), "{} is null here, not in Arrow"
    big = dict(plain, eventProps={"n": 2**53 + 1})
    assert not _arrow_path_agrees([Item(1, None, orjson.dumps(big)), items[0]])


@pytest.mark.parametrize(
    ("values", "arrow"),
    [
        ([10**15, 2**53, -(2**53), 7], True),  # 16 digits, and the bounds: integers that fit 53 bits
        ([1234567890123456.8, 0.5, 3], True),  # a double of 16 digits before the point; 3 becomes 3.0
        ([2**53, 0.5], False),  # as a double, 2**53 could be a larger integer rounded: declined
        ([2**53 + 1, 0.5], False),  # an integer beyond 53 bits and a double: string, not a rounded double
        ([-(2**53) - 1, 0.5], False),
        ([2**63 - 1], False),  # beyond 53 bits but int64: declined, the Python path reads it
        ([[2**60, 0.5]], False),  # in a list
        ([{"deep": [1, 2**54]}, {"deep": [0.5]}], False),  # in a struct in a list
        ([1e300], False),  # a double beyond 2**53: declined, though only an integer would read wrong
    ],
)
def test_parquet_arrow_path_takes_numbers_only_within_2_to_53(values, arrow):
    """Arrow promotes a property's integers to double when doubles appear; the widening rule wants that only
    when every integer fits 53 bits, so the Arrow path declines a table holding any number beyond."""
    lines = [{"ts": 20261125000000 + i, "eventProps": {"n": v, "s": "x"}} for i, v in enumerate(values)]
    items = [Item(i, None, orjson.dumps(line)) for i, line in enumerate(lines)]
    assert _arrow_path_agrees(items) is arrow


@SETTINGS
@given(
    series(max_records=30),
    st.sampled_from(["json", "csv"]),  # the rollers; XML is encoded before the shuffle and rolls like CSV
    st.booleans(),
    st.integers(min_value=1024, max_value=4096),  # --max_file_bytes is at least 1024
)
def test_rolled_files_stay_under_the_limit_and_hold_every_record_once(s, fmt, gzip, limit):
    name, items, records = s
    items = sorted(items)
    opts = SeriesOptions(
        "events", fmt, "gzip" if gzip else "none", limit, "r", "20261127000000", "db", True, False
    )
    files: dict[str, bytes] = {}

    def upload(object_name: str, path: str) -> None:
        with open(path, "rb") as f:
            files[object_name] = f.read()

    out = list(write_series((name, "20261125"), items, opts, upload, scan=lambda: iter(items)))
    too_large = {v for kind, v in out if kind == "too_large"}
    infos = [v for kind, v in out if kind == "file"]
    assert [i["index"] for i in infos] == list(range(len(infos))), "file indexes 0, 1, 2 … without gaps"
    got = []
    for info in infos:
        data = files[info["name"]]
        assert len(data) == info["bytes"] <= limit
        body = unzip(data, info["name"])
        if fmt == "json":
            got += [orjson.dumps(r) for r in read_json(body)[1]]
        else:
            got += [None] * len(read_csv(body)[1])
        assert info["records"] == (len(got) - sum(i["records"] for i in infos[: infos.index(info)]))
    kept = [i.line for k, i in enumerate(items) if k not in too_large]
    assert len(got) == len(kept), "every record once, in order, except those too large for any file"
    if fmt == "json":
        assert [orjson.loads(x) for x in got] == [orjson.loads(x) for x in kept]
    enc = text_encoder(fmt, SeriesContext(EVENTS, name), items)
    for k in too_large:  # too large only when a file of the series holding just it would pass the limit
        alone = enc.header() + enc.encode(items[k]) + enc.footer()
        assert len(gzip_module.compress(alone, 6, mtime=0) if gzip else alone) > limit


def test_gzip_file_of_one_small_record_stays_under_a_small_limit():
    # Found by test_rolled_files_stay_under_the_limit_and_hold_every_record_once with limits from 150 bytes.
    small = Item(0, None, b'{"ts":19700101000000}')
    line = b'{"profile":{},"ts":19700101100020,"eventProps":{"":[[],-1078368445200,[],[null,null,false,1.1123045145325534e+16]]}}'
    items = [small] * 6 + [Item(36020, None, line)]
    opts = SeriesOptions("events", "json", "gzip", 150, "r", "20261127000000", "db", True, False)
    sizes = []
    key = ("000\xa0\U00010010\U00012390\U00013dd7", "20261125")
    out = list(write_series(key, items, opts, lambda name, path: sizes.append(os.path.getsize(path))))
    assert max(sizes) <= 150, sizes
    # Alone, the long record's gzip file is 151 bytes: it cannot fit any file, so it is reported too large
    # (a dead letter) rather than written over the limit.
    header = (key[0] + "\n").encode()
    alone = len(gzip_module.compress(header + line + b"\n", 6, mtime=0))
    assert alone > 150
    assert ("too_large", 6) in out and sum(f["records"] for k, f in out if k == "file") == 6


# ---- hostile bytes ----------------------------------------------------------------------------------------------

_CHECKER = RecordChecker("events", Window("ts", 0, MAX_TS), None, "UTC", "20261127", 900)


@SETTINGS
@given(st.one_of(st.binary(max_size=200), VALUES.map(lambda v: json.dumps(v).encode())))
def test_any_bytes_are_a_record_or_a_bad_record(raw):
    try:
        good = _CHECKER.check(decode_json(raw))
    except BadRecord as e:
        assert e.reason and e.detail
        return
    assert good is None or orjson.loads(good.line)["ts"] >= 0


@SETTINGS
@given(
    st.fixed_dictionaries(
        {"eventName": NAMES, "ts": st.integers(0, MAX_TS - 1)},
        optional={g: OBJECTS for g in GROUPS} | {"capturedAt": st.integers(0, MAX_TS - 1)},
    )
)
def test_any_valid_event_is_exported_with_its_objects_unchanged(rec):
    raw = orjson.dumps(rec)
    good = _CHECKER.check(decode_json(raw))
    assert good is not None and good.key[0] == rec["eventName"] and good.ts == rec["ts"]
    line = orjson.loads(good.line)
    assert list(line) == [k for k in ("profile", "ts", "deviceInfo", "eventProps") if k in line]
    for g in GROUPS:
        assert strict_equal(line.get(g), rec.get(g))


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
def test_integers_beyond_64_bits_anywhere_are_bad(value):
    raw = orjson.dumps({"eventName": "E", "ts": 1, "eventProps": {"a": [{"b": 0}]}}).replace(
        b'"b":0', b'"b":' + str(value).encode()
    )
    with pytest.raises(BadRecord) as e:
        _CHECKER.check(decode_json(raw))
    assert e.value.reason == "integer_outside_64_bits"
