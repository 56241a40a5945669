"""Work pools (transforms/pool.py): every piece of work goes to exactly one worker, whoever comes first, and
the parse and write stages give the same output whichever worker claims what."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from apache_beam import pvalue
from apache_beam.options.pipeline_options import PipelineOptions

from ctexport import generate
from pipelines.export import event_name_budget
from pipelines.options import validate
from transforms.pool import WorkPool, pool_folder
from transforms.series import DEAD_LETTERS, STATS, _ParseTask
from transforms.sources import plan_reads
from transforms.write import Shard, _shares, shard_claim

END = 1795737600  # 2026-11-27T00:00:00Z
START = END - 2 * 86400
_DONE = object()


def round_robin(*iterators) -> list[list]:
    """Advance the iterators one step each in turn until all are done; what each yielded."""
    got: list[list] = [[] for _ in iterators]
    live = list(enumerate(iterators))
    while live:
        for entry in list(live):
            i, it = entry
            item = next(it, _DONE)
            if item is _DONE:
                live.remove(entry)
            else:
                got[i].append(item)
    return got


def test_interleaved_workers_take_every_piece_once_in_turn(tmp_path):
    a, b = WorkPool(str(tmp_path)), WorkPool(str(tmp_path))
    got_a, got_b = round_robin(a.take(7), b.take(7))
    assert got_a == [0, 2, 4, 6] and got_b == [1, 3, 5]


def test_a_worker_that_comes_late_gets_only_what_is_left(tmp_path):
    first = WorkPool(str(tmp_path)).take(5)
    assert [next(first), next(first)] == [0, 1]
    late = WorkPool(str(tmp_path))
    assert list(late.take(5)) == [2, 3, 4]
    assert list(first) == []  # nothing left
    assert list(late.take(5)) == []  # and a later call of the same worker gets nothing again


def _take_all(folder: str, count: int, start, out) -> None:
    start.wait()
    out.put(list(WorkPool(folder).take(count)))


def test_processes_racing_for_the_pieces_get_each_exactly_once(tmp_path):
    """Four processes, released together, claim 4,000 pieces: none is lost and none is taken twice."""
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_take_all, args=(str(tmp_path), 4000, start, out)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    taken = [i for part in got for i in part]
    assert sorted(taken) == list(range(4000))
    assert sum(bool(part) for part in got) >= 2, "the processes raced"


def test_only_multi_process_runs_with_a_local_spill_and_no_replays_get_a_pool(tmp_path):
    assert pool_folder(str(tmp_path), "read", 2) == str(tmp_path / "pool-read")
    assert pool_folder(str(tmp_path), "read", 1) is None
    assert pool_folder(str(tmp_path), "read", 0) is None
    assert pool_folder("gs://bucket/spill", "write", 2) is None
    # Replayed bundles (--direct_runner_bundle_repeat) run first as dry runs: they would claim the work.
    assert pool_folder(str(tmp_path), "read", 2, bundle_repeat=1) is None


def _parse_task(data: Path, spill: Path, pool: str | None, fmt: str = "json") -> tuple[_ParseTask, int]:
    argv = [
        "--source", f"{data}/events-*", "--output", str(data / "out"), "--request_id", "req_1",
        "--database_id", "W4R-565-5Z4Z", "--run_timestamp", "20261127120000",
        "--start", "20261125", "--end", "20261127", "--format", fmt,
    ]  # fmt: skip
    request, files = validate(PipelineOptions(argv), now=END + 43200)
    tasks = plan_reads(files, request.source_format, range_bytes=40_000)
    fn = _ParseTask(
        request, tasks, {f.url: i for i, f in enumerate(files)}, event_name_budget(request), str(spill), pool
    )
    fn.setup()
    return fn, len(tasks)


def _what_came_out(outputs: list) -> tuple[list, list, int]:
    """The runs (series key, task, count, bytes, where in the file), the stats and the dead letters."""
    refs, stats, dead = [], [], 0
    for o in outputs:
        if isinstance(o, pvalue.TaggedOutput):
            if o.tag == STATS:
                stats.append(tuple(sorted(o.value.items())))
            else:
                assert o.tag == DEAD_LETTERS
                dead += 1
        else:
            key, ref = o
            refs.append((key, ref.task, ref.count, ref.nbytes, ref.offset, ref.length))
    return sorted(refs), sorted(stats), dead


def test_parse_workers_with_a_pool_read_every_task_once(tmp_path):
    """Two parse workers over one pool, each handed half of the task indexes as the runner hands them: they
    read every task once between them, and emit what one worker reading each task emits."""
    data = tmp_path / "data"
    data.mkdir()
    lines = list(generate.generate_events(1200, seed=5, start_ts=START, end_ts=END, bad=9))
    generate.write_jsonl(data / "events-0.jsonl", lines)

    alone, n = _parse_task(data, tmp_path / "spill-alone", None)
    expected = _what_came_out([o for i in range(n) for o in alone.process(i)])
    assert n >= 6 and len(expected[1]) == n and expected[2] == 9

    pool = str(tmp_path / "spill" / "pool-read")
    a, _ = _parse_task(data, tmp_path / "spill", pool)
    b, _ = _parse_task(data, tmp_path / "spill", pool)

    def worker(fn, indexes):  # the runner calls process once per element it handed this worker
        for i in indexes:
            yield from fn.process(i)

    got_a, got_b = round_robin(worker(a, range(0, n, 2)), worker(b, range(1, n, 2)))
    assert _what_came_out(got_a + got_b) == expected
    assert got_a and got_b, "both workers read tasks"

    # A worker that comes when the other has read everything emits nothing.
    c, _ = _parse_task(data, tmp_path / "spill", pool)
    assert list(worker(c, range(n))) == []


def _keys_per_series(outputs: list) -> tuple[dict, int]:
    """The union of the CSV header keys the runs of each series carry, and how many keys they carry in all."""
    union: dict = {}
    sent = 0
    for o in outputs:
        if not isinstance(o, pvalue.TaggedOutput):
            key, ref = o
            assert ref.meta is not None
            parts = union.setdefault(key, (set(), set(), set()))
            for part, keys in zip(parts, ref.meta, strict=True):
                part.update(keys)
                sent += len(keys)
    return union, sent


def _runs(outputs) -> dict:
    """The RunRef per series key of one read task's outputs."""
    return dict(o for o in outputs if not isinstance(o, pvalue.TaggedOutput))


def test_csv_runs_carry_each_header_key_once_per_bundle_and_the_union_is_whole(tmp_path):
    """The writer takes a CSV series' header from the union of its runs' keys. A run carries only the keys
    its bundle has not sent yet for the series, so the union is what every run carrying all its keys gives,
    also with two workers over one pool (a bundle each), and a new bundle sends the keys again."""
    data = tmp_path / "data"
    data.mkdir()
    lines = list(generate.generate_events(1200, seed=11, start_ts=START, end_ts=END, bad=0))
    generate.write_jsonl(data / "events-0.jsonl", lines)

    alone, n = _parse_task(data, tmp_path / "spill-alone", None, "csv")
    every: list = []
    for i in range(n):
        alone.start_bundle()  # a bundle per task: every run carries all the keys its task saw
        every += alone.process(i)
    expected, sent_alone = _keys_per_series(every)
    assert n >= 6 and len(expected) > 10 and all(any(parts) for parts in expected.values())

    pool = str(tmp_path / "spill" / "pool-read")
    a, _ = _parse_task(data, tmp_path / "spill", pool, "csv")
    b, _ = _parse_task(data, tmp_path / "spill", pool, "csv")
    a.start_bundle()
    b.start_bundle()
    got_a, got_b = round_robin(
        (o for i in range(0, n, 2) for o in a.process(i)), (o for i in range(1, n, 2) for o in b.process(i))
    )
    assert got_a and got_b, "both workers read tasks"
    union, sent = _keys_per_series(got_a + got_b)
    assert union == expected
    assert sent < sent_alone / 2, "the runs after a series' first in a bundle carry few keys"

    # Within one bundle the second run of a series carries none of the keys of the first; a new bundle
    # starts over.
    one, _ = _parse_task(data, tmp_path / "spill-one", None, "csv")
    one.start_bundle()
    first = _runs(one.process(0))
    second = _runs(one.process(1))
    shared = [key for key in first if key in second]
    assert shared
    for key in shared:
        assert all(not (x & y) for x, y in zip(first[key].meta, second[key].meta, strict=True))
    one.start_bundle()
    again = _runs(one.process(1))
    alone.start_bundle()
    whole = _runs(alone.process(1))
    assert {key: ref.meta for key, ref in again.items()} == {key: ref.meta for key, ref in whole.items()}


def test_writers_with_a_pool_are_each_handed_every_shard_largest_first(tmp_path):
    shards = [Shard((f"E{i}", "20261125"), [], 0, 1, (0, 0), size) for i, size in enumerate([5, 90, 40, 7])]
    handed = list(_shares((None, shards), 2, True))
    assert [k for k, _ in handed] == [0, 1]
    assert all([s.nbytes for s in share] == [90, 40, 7, 5] for _, share in handed)
    names = {shard_claim(s) for s in shards} | {shard_claim(shards[0]._replace(index=1))}
    assert len(names) == 5, "a shard's claim names its series and its index"
