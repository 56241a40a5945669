"""Sorted runs (transforms/runs.py) and the Arrow writer path: a task's run file holds several series, each read
back exactly; merging runs, in Python or in Arrow, gives the order a plain sort gives; and the Arrow roller
cuts files exactly where the record-at-a-time roller cuts them."""

from __future__ import annotations

import os
import random
from unittest import mock

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from transforms import runs
from transforms.formats.base import EVENTS, SeriesContext
from transforms.formats.json import JsonEncoder
from transforms.formats.xml import PreEncodedXml
from transforms.write import Shard, _roll_plain, balanced_shares, roll_encoded

SETTINGS = settings(
    max_examples=int(os.environ.get("CTEXPORT_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    database=None,
    derandomize="CTEXPORT_HYPOTHESIS_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Few distinct times and lines, so ties on ts, on (ts, line) and exact duplicates are common; lines that are
# prefixes of each other test the byte order of the tie-break.
LINES = st.sampled_from(
    [b"", b"{", b"{}", b'{"a":1}', b'{"a":1}x', b'{"a":10}', '{"é":"✓"}'.encode(), b"z" * 70]
)
RECORDS = st.lists(st.tuples(st.integers(0, 4), LINES), max_size=60)


def _write_tasks(tmp_path, tasks: list[dict[str, list[tuple]]]) -> dict[str, list[runs.RunRef]]:
    """Write each task's series to its own run file, as the parse stage does; returns the refs per series."""
    refs: dict[str, list[runs.RunRef]] = {}
    for t, series in enumerate(tasks):
        with runs.RunFile(str(tmp_path / f"{t:06d}.run")) as f:
            for key in sorted(series):
                recs = sorted(series[key])
                offset, length, nbytes = f.add(recs, False)
                refs.setdefault(key, []).append(runs.RunRef(f.path, t, len(recs), nbytes, offset, length))
    return refs


@SETTINGS
@given(
    st.lists(st.dictionaries(st.sampled_from(["A", "B", "C"]), RECORDS, max_size=3), min_size=1, max_size=4)
)
def test_runs_read_back_and_merge_in_series_order(tmp_path_factory, tasks_spec):
    tmp = tmp_path_factory.mktemp("runs")
    # A record's position: task << 32 | its index in the task, as the parse stage numbers them.
    tasks = []
    for t, spec in enumerate(tasks_spec):
        n = 0
        series = {}
        for key, recs in spec.items():
            series[key] = []
            for ts, line in recs:
                series[key].append((ts, line, t << 32 | n, None, None))
                n += 1
        tasks.append(series)
    refs = _write_tasks(tmp, tasks)
    for key, key_refs in refs.items():
        for ref in key_refs:
            assert list(runs.read_run(ref)) == sorted(tasks[ref.task][key]), "a section reads back alone"
        everything = sorted(r for task in tasks for r in task.get(key, []))
        assert list(runs.merged(key_refs)) == everything
        json_lines = runs.sorted_lines(key_refs, b"\n")
        assert json_lines.in_order().to_pylist() == [r[1] + b"\n" for r in everything]
        assert json_lines.sizes().to_pylist() == [len(r[1]) + 1 for r in everything]
        assert json_lines.positions.to_pylist() == [r[2] for r in everything]
        blob, ts, positions = runs.sorted_blob(key_refs)
        assert bytes(blob) == b"".join(r[1] + b"\n" for r in everything), "Parquet's read of a series"
        assert ts.to_pylist() == [r[0] for r in everything]
        assert positions.to_pylist() == [r[2] for r in everything]
        xml_lines = runs.sorted_lines(key_refs, b"")
        assert xml_lines.in_order().to_pylist() == [r[1] for r in everything]
        if everything:
            assert xml_lines.in_order(1).to_pylist() == [r[1] for r in everything[1:]]


@SETTINGS
@given(
    st.lists(st.tuples(st.sampled_from(["A", "B", "C"]), st.integers(0, 4), LINES), max_size=80),
    st.integers(0, 3),
    st.sampled_from([3, runs.FRAME_RECORDS]),
)
def test_columns_write_what_sorted_records_write(tmp_path_factory, found, task, frame_records):
    """A task's events gathered in columns and sorted in Arrow make the same run file, byte for byte, as the
    same records sorted as tuples and added one series at a time; with frames cut at the same records."""
    tmp = tmp_path_factory.mktemp("columns")
    columns = runs.EventColumns()
    series: dict[tuple, list] = {}
    for i, (name, ts, line) in enumerate(found):
        index = 3 * i + 1  # an index in the task: records between found ones were blank, bad or out of scope
        columns.add((name, "20261125"), ts, line, index)
        series.setdefault((name, "20261125"), []).append((ts, line, task << 32 | index, None, None))
    with mock.patch.object(runs, "FRAME_RECORDS", frame_records):
        with runs.RunFile(str(tmp / "tuples.run")) as f:
            expected = []
            for key in sorted(series):
                recs = sorted(series[key])
                offset, length, nbytes = f.add(recs, False)
                expected.append((key, len(recs), offset, length, nbytes))
        with runs.RunFile(str(tmp / "columns.run")) as g:
            got = list(g.add_columns(columns, task << 32))
    assert got == expected
    with open(f.path, "rb") as a, open(g.path, "rb") as b:
        assert a.read() == b.read()


def test_a_truncated_run_file_is_an_error_not_fewer_records(tmp_path):
    recs = [(i, b"x" * 10, i, None, None) for i in range(100)]
    with runs.RunFile(str(tmp_path / "t.run")) as f:
        offset, length, nbytes = f.add(recs, False)
    ref = runs.RunRef(f.path, 0, 100, nbytes, offset, length)
    with open(f.path, "r+b") as fh:
        fh.truncate(length - 5)
    for read in (lambda: list(runs.read_run(ref)), lambda: runs.sorted_lines([ref], b"\n")):
        try:
            read()
        except OSError as e:
            assert "truncated" in str(e)
        else:
            raise AssertionError("a truncated run read without error")


@SETTINGS
@given(
    st.lists(st.integers(0, 300), max_size=40),
    st.integers(60, 700),
    st.sampled_from(["json", "xml"]),
    st.booleans(),
    st.integers(1, 5),
)
def test_arrow_roller_cuts_where_the_record_roller_cuts(
    tmp_path_factory, sizes, limit, fmt, header_on, piece
):
    tmp = tmp_path_factory.mktemp("roll")
    rng = random.Random(len(sizes) * 1000 + limit)
    lines = [bytes(rng.randrange(97, 123) for _ in range(n)) for n in sizes]
    ctx = SeriesContext(EVENTS, "Ev", False, header_on)
    if fmt == "json":
        encoder = JsonEncoder(ctx, [])
        encoded = [line + b"\n" for line in lines]
    else:
        encoder = PreEncodedXml(ctx)
        encoded = [b"<Event>" + line + b"</Event>\n" for line in lines]
    items = [
        runs.Record(i, e if fmt == "xml" else line, i)
        for i, (line, e) in enumerate(zip(lines, encoded, strict=True))
    ]
    header, footer = encoder.header(), encoder.footer()

    def chunks(gen, folder):
        os.makedirs(folder)
        out = []
        for c in gen(folder):
            if isinstance(c, int):
                out.append(("too_large", c))
            else:
                with open(c.path, "rb") as f:
                    out.append((f.read(), c.size, c.first, c.count))
        return out

    import pyarrow as pa

    # The lines as a run holds them: in some other order, `order` telling the series order.
    shuffled = list(range(len(lines)))
    rng.shuffle(shuffled)
    stored = [(lines if fmt == "json" else encoded)[k] for k in shuffled]
    order = sorted(range(len(stored)), key=lambda k: shuffled[k])
    arrow = runs.SortedLines(
        pa.array(stored, pa.large_binary()),
        pa.array(order, pa.uint64()),
        pa.array(range(len(lines)), pa.int64()),
        b"\n" if fmt == "json" else b"",
    )
    by_record = chunks(lambda d: _roll_plain(items, encoder, limit, d), str(tmp / "a"))
    by_arrow = chunks(lambda d: roll_encoded(arrow, header, footer, limit, d, piece), str(tmp / "b"))
    assert by_arrow == by_record
    for c in by_arrow:
        if c[0] != "too_large":
            assert len(c[0]) == c[1] <= limit


@SETTINGS
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 20), st.integers(0, 90)), max_size=40), min_size=1, max_size=4
    ),
    st.integers(1, 2000),
)
def test_shard_spans_cut_a_series_into_ordered_spans_that_read_back_whole(
    tmp_path_factory, tasks_spec, shard
):
    assume(any(tasks_spec))  # a series has a record
    tmp = tmp_path_factory.mktemp("spans")
    tasks = [
        {"A": [(ts, b"x" * n, t << 32 | i, None, None) for i, (ts, n) in enumerate(recs)]}
        for t, recs in enumerate(tasks_spec)
    ]
    with mock.patch.object(runs, "FRAME_RECORDS", 7):  # runs of several frames, so spans cut inside them
        refs = _write_tasks(tmp, [t for t in tasks if t["A"]]).get("A", [])
    everything = sorted(r for task in tasks for r in task["A"])
    spans = runs.shard_spans(refs, shard)
    total = sum(len(r[1]) for r in everything)
    if total <= shard:
        assert spans == [(runs.ALL, total)]
    bounds = [span for span, _ in spans]
    assert bounds[0][0] == runs.ALL[0] and bounds[-1][1] == runs.ALL[1]
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(bounds, bounds[1:], strict=False)), "contiguous"
    parts = []
    for span, nbytes in spans:
        part = list(runs.merged(refs, span))
        assert part, "no span is empty"
        assert sum(len(r[1]) for r in part) == nbytes
        lines = runs.sorted_lines(refs, b"", span)
        assert lines.in_order().to_pylist() == [r[1] for r in part]
        assert lines.positions.to_pylist() == [r[2] for r in part]
        # Each run's records in the span, as (first, count) of its sorted records: what Parquet slices its
        # runs' tables by.
        assert [s[0] for s in lines.sections] == sorted(refs, key=lambda r: r.task), (
            "every run, in task order"
        )
        for ref, *section in lines.sections:
            inside = [i for i, r in enumerate(runs.read_run(ref)) if span[0] <= r.ts < span[1]]
            assert section == ([inside[0], len(inside)] if inside else [0, 0])
            assert inside == list(range(section[0], section[0] + section[1])), "a span is contiguous in a run"
        parts += part
    assert parts == everything, "the spans in order are the series in order, each record once"
    if len(spans) > 1:
        # Spans are near the asked size: a span passes it by less than one timestamp's records.
        per_ts = {}
        for r in everything:
            per_ts[r[0]] = per_ts.get(r[0], 0) + len(r[1])
        assert all(nbytes <= shard + max(per_ts.values()) for _, nbytes in spans)


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=10**8), max_size=60),
    n=st.integers(min_value=1, max_value=5),
)
def test_balanced_shares_hold_every_shard_once_and_about_equal_data(sizes, n):
    shards = [
        Shard(key=(f"e{i % 7}", "20261124"), refs=[], index=i, count=len(sizes), span=runs.ALL, nbytes=b)
        for i, b in enumerate(sizes)
    ]
    shares = balanced_shares(reversed(shards), n)
    assert len(shares) == n
    assert sorted(s.index for share in shares for s in share) == list(range(len(sizes)))
    totals = [sum(s.nbytes for s in share) for share in shares]
    # Longest-first greedy: the fullest share exceeds the emptiest by at most one shard.
    assert max(totals) - min(totals) <= max(sizes, default=0)
    for share in shares:
        assert [s.nbytes for s in share] == sorted((s.nbytes for s in share), reverse=True)
    assert balanced_shares(shards, n) == shares  # the order the shards come in does not matter


def test_balanced_shares_of_zipf_sized_series_differ_by_less_than_the_smallest():
    # Handing such shards out alternately, largest first, leaves the first share ~27x the smallest ahead.
    sizes = [int(1e8 / (k + 1)) for k in range(40)]
    shards = [Shard(("e", str(k)), [], 0, 1, runs.ALL, b) for k, b in enumerate(sizes)]
    shares = balanced_shares(shards, 2)
    totals = sorted(sum(s.nbytes for s in share) for share in shares)
    assert totals[1] - totals[0] <= sizes[-1]


def test_arrow_allocates_from_malloc_unless_the_environment_names_a_pool(monkeypatch):
    import pyarrow as pa

    before = pa.default_memory_pool()
    try:
        pa.set_memory_pool(pa.mimalloc_memory_pool())
        monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "mimalloc")
        runs.use_system_allocator()
        assert pa.default_memory_pool().backend_name == "mimalloc"
        monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL")
        runs.use_system_allocator()
        assert pa.default_memory_pool().backend_name == "system"
        assert pa.array([1, 2, 3]).sum().as_py() == 6
    finally:
        pa.set_memory_pool(before)
