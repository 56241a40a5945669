"""Finalize's check of the counts: a run whose work was lost or done twice fails, with no manifest."""

from __future__ import annotations

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.options import validate
from transforms import naming
from transforms.finalize import RUN_FAILED, RunFailed, finalize_run
from transforms.storage import open_storage

END = 1795737600  # 2026-11-27T00:00:00Z


def _request(tmp_path):
    argv = [
        "--source", str(tmp_path / "in-*.jsonl"), "--output", str(tmp_path / "out"), "--request_id", "req_1",
        "--database_id", "W4R-565-5Z4Z", "--run_timestamp", "20261127120000",
        "--start", "20261125", "--end", "20261127", "--format", "json",
    ]  # fmt: skip
    return validate(PipelineOptions(argv), now=END + 43200, check_storage=False)[0]


def _file(records: int) -> dict:
    name = naming.data_name("req_1", "20261127120000", "Charged", "20261125", 0, "W4R-565-5Z4Z", "json")
    return {"name": name, "event": "Charged", "date": "20261125", "index": 0, "bytes": 10, "records": records,
            "crc32c": "AAAAAA=="}  # fmt: skip


@pytest.mark.parametrize(
    "stats,records,problem",
    [
        ([{"tasks": 1, "read": 5}, {"tasks": 1, "read": 4, "out_of_scope": 1}], 8, None),
        ([{"tasks": 1, "read": 5}], 5, "1 of 2 read tasks reported"),  # a task's output lost
        ([{"tasks": 1, "read": 5}] * 3, 15, "3 of 2 read tasks reported"),  # a task's output twice
        (
            [{"tasks": 1, "read": 5}, {"tasks": 1, "read": 4}],
            10,
            "9 records read, 10 exported",
        ),  # a shard twice
        ([{"tasks": 1, "read": 5}, {"tasks": 1, "read": 4}], 7, "9 records read, 7 exported"),  # a shard lost
    ],
)
def test_counts_that_do_not_add_up_fail_the_run_without_a_manifest(tmp_path, stats, records, problem):
    request = _request(tmp_path)
    store = open_storage(request.output)
    manifest = naming.manifest_name("req_1", "20261127120000")
    if problem is None:
        done = finalize_run(request, [], [_file(records)], [], stats, store, tasks=2)
        assert done["totals"]["records_read"] == 9 and store.exists(manifest)
        return
    with pytest.raises(RunFailed) as failed:
        finalize_run(request, [], [_file(records)], [], stats, store, tasks=2)
    assert str(failed.value).startswith(f"{RUN_FAILED}: the counts do not add up")
    assert problem in str(failed.value)
    assert not store.exists(manifest)
