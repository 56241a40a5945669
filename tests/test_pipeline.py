"""The export job end to end on the DirectRunner: what a user would check in the output folder."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from lxml import etree

from ctexport import generate
from pipelines.export import run
from transforms import naming

pytestmark = pytest.mark.pipeline

END = 1795737600  # 2026-11-27T00:00:00Z
START = END - 2 * 86400
RUN_TS = "20261127120000"
DB = "W4R-565-5Z4Z"


def stamp(ts: int) -> int:
    return int(datetime.fromtimestamp(ts, UTC).strftime("%Y%m%d%H%M%S"))


def day(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y%m%d")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """1,500 events (uniform names, 3% late captures) + 12 bad ones, in two files; 300 profile versions."""
    folder = tmp_path_factory.mktemp("data")
    lines = list(generate.generate_events(1500, seed=3, start_ts=START, end_ts=END, bad=12, profiles=200))
    generate.write_jsonl(folder / "events-0.jsonl", lines[:700])
    generate.write_jsonl(folder / "events-1.jsonl.gz", lines[700:], gzip=True)
    profiles = list(generate.generate_profiles(300, seed=3, start_ts=START, end_ts=END, bad=4))
    generate.write_jsonl(folder / "profiles-0.jsonl", profiles)
    return folder


def input_records(folder: Path, kind: str = "events") -> tuple[list[dict], int]:
    """Good records of the input, decided by the generator's own checker (independent of transforms/)."""
    good, bad = [], 0
    for path in sorted(folder.glob(f"{kind}-*")):
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        for line in raw.split(b"\n"):
            if not line.strip():
                continue
            rec = generate._parse(line)
            ok = rec is not None and (
                generate.good_event(rec) if kind == "events" else generate.good_profile(rec)
            )
            if ok:
                good.append(rec)
            else:
                bad += 1
    return good, bad


def export(capsys, *flags: str, source: str, output, start=START, end=END) -> tuple[int, str, str]:
    argv = ["--source", source, "--output", str(output), "--request_id", "req_1", "--database_id", DB]
    if "--run_timestamp" not in flags:
        argv += ["--run_timestamp", RUN_TS]
    if "--export_type" not in flags and "--frequency" not in flags:
        argv += [
            "--start",
            datetime.fromtimestamp(start, UTC).strftime("%Y%m%d%H%M%S"),
            "--end",
            datetime.fromtimestamp(end, UTC).strftime("%Y%m%d%H%M%S"),
        ]
    status = run(argv + list(flags))
    out, err = capsys.readouterr()
    return status, out, err


def manifest(output: Path, run_ts: str = RUN_TS) -> dict:
    return json.loads((output / naming.manifest_name("req_1", run_ts)).read_bytes())


def data_files(output: Path) -> list[Path]:
    return sorted(p for p in output.iterdir() if p.is_file())


def expected_lines(records: list[dict]) -> Counter:
    """(event, date, data line as dict text) for each good event, rendered independently."""
    out = Counter()
    for r in records:
        line = {}
        for k in ("profile", "ts", "deviceInfo", "eventProps"):
            if k == "ts":
                line["ts"] = stamp(r["ts"])
            elif r.get(k) is not None:
                line[k] = r[k]
        out[(r["eventName"], day(r["ts"]), json.dumps(line, sort_keys=True))] += 1
    return out


def test_json_export_has_every_record_once_in_series_order(data, tmp_path, capsys):
    status, out, err = export(capsys, "--source_format", "jsonl", source=f"{data}/events-*", output=tmp_path)
    assert status == 0, err
    good, bad = input_records(data)
    got = Counter()
    for path in data_files(tmp_path):
        m = naming.NAME_RE.match(path.name)
        assert m and m["req"] == "req_1" and m["run"] == RUN_TS and m["db"] == DB and m["ext"] == "json"
        event = naming.decode_event_name(m["event"])
        lines = path.read_bytes().split(b"\n")
        assert lines[0].decode() == event and lines[-1] == b""
        records = [json.loads(x) for x in lines[1:-1]]
        keys = [(r["ts"], x) for r, x in zip(records, lines[1:-1], strict=True)]
        assert keys == sorted(keys), "records are ordered by ts, then bytes"
        for r in records:
            assert list(r) == [k for k in ("profile", "ts", "deviceInfo", "eventProps") if k in r]
            got[(event, m["date"], json.dumps(r, sort_keys=True))] += 1
    assert got == expected_lines(good)
    m = manifest(tmp_path)
    assert m["status"] == "Done"
    assert m["totals"]["exported"] == len(good) and m["totals"]["bad"] == bad == 12
    assert m["totals"]["records_read"] == len(good) + bad
    assert {f["name"] for f in m["files"]} == {p.name for p in data_files(tmp_path)}
    for f in m["files"]:
        assert (tmp_path / f["name"]).stat().st_size == f["bytes"]
    assert "records read 1,512" in out and "exported 1,500" in out


def test_dead_letters_carry_reason_source_and_text(data, tmp_path, capsys):
    status, _, err = export(capsys, source=f"{data}/events-*", output=tmp_path)
    assert status == 0, err
    lines = (tmp_path / naming.errors_name("req_1", RUN_TS, 0)).read_text().splitlines()
    letters = [json.loads(x) for x in lines]
    assert len(letters) == 12
    reasons = Counter(d["reason"] for d in letters)
    for reason in (
        "unparseable",
        "invalid_utf8",
        "missing_field",
        "wrong_type",
        "out_of_range",
        "integer_outside_64_bits",
        "invalid_event_name",
    ):
        assert reasons[reason] >= 1, reasons
    orders = [(d["source"]["file"], d["source"].get("line")) for d in letters]
    assert orders == sorted(orders), "dead letters are in source order"
    plain = [d for d in letters if d["source"]["file"].endswith("events-0.jsonl")]
    raw = (data / "events-0.jsonl").read_bytes().split(b"\n")
    for d in plain:
        original = raw[d["source"]["line"] - 1].decode("utf-8", "replace")
        assert d["record"] == original
    assert manifest(tmp_path)["bad_records_by_reason"] == dict(sorted(reasons.items()))


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    assert b"\r\n" in raw
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8"), newline="")))
    return rows[0], [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]


def cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_csv_export_reads_back(data, tmp_path, capsys, compression):
    status, _, err = export(
        capsys, "--format", "csv", "--compression", compression, source=f"{data}/events-*", output=tmp_path
    )
    assert status == 0, err
    good, _ = input_records(data)
    expected = Counter()
    for r in good:
        row = {"eventName": r["eventName"], "ts": str(stamp(r["ts"]))}
        for group in ("profile", "deviceInfo", "eventProps"):
            for k, v in (r.get(group) or {}).items():
                if cell(v) != "":  # an empty cell: null, absent and "" read back alike
                    row[f"{group}.{k}"] = cell(v)
        expected[json.dumps(row, sort_keys=True, ensure_ascii=False)] += 1
    got = Counter()
    for path in data_files(tmp_path):
        assert path.name.endswith(".csv.gz" if compression == "gzip" else ".csv")
        header, rows = read_csv(path)
        assert header[:2] == ["eventName", "ts"]
        for row in rows:
            got[
                json.dumps({k: v for k, v in row.items() if v != ""}, sort_keys=True, ensure_ascii=False)
            ] += 1
    assert got == expected


def test_xml_export_parses_and_holds_every_record(data, tmp_path, capsys):
    status, _, err = export(capsys, "--format", "xml", source=f"{data}/events-*", output=tmp_path)
    assert status == 0, err
    good, _ = input_records(data)
    expected = Counter(
        (r["eventName"], str(stamp(r["ts"])), cell((r.get("eventProps") or {}).get("CT Source")))
        for r in good
    )
    got = Counter()
    for path in data_files(tmp_path):
        root = etree.fromstring(path.read_bytes())
        assert root.tag == "Events"
        for ev in root:
            assert [c.tag for c in ev][:2] == ["ts", "eventName"]
            entries = ev.find("eventProps")
            props = {
                e.findtext("key"): e.findtext("value") or "" for e in (entries if entries is not None else [])
            }
            got[(ev.findtext("eventName"), ev.findtext("ts"), props.get("CT Source", ""))] += 1
    assert got == expected


@pytest.mark.parametrize("compression", ["snappy", "zstd"])
def test_parquet_export_reads_back(data, tmp_path, capsys, compression):
    status, _, err = export(
        capsys,
        "--format",
        "parquet",
        "--compression",
        compression,
        source=f"{data}/events-*",
        output=tmp_path,
    )
    assert status == 0, err
    good, _ = input_records(data)
    # identity is a string in some records and a number in others: Parquet widens it to string (SPEC section 4)
    expected = Counter(
        (r["eventName"], r["ts"], cell((r.get("profile") or {}).get("identity"))) for r in good
    )
    got = Counter()
    for path in data_files(tmp_path):
        assert path.name.endswith(".parquet")
        f = pq.ParquetFile(path)
        assert f.metadata.row_group(0).column(0).compression.lower() == compression
        table = f.read()
        assert str(table.schema.field("ts").type) == "timestamp[us, tz=UTC]"
        for row in table.to_pylist():
            got[
                (row["eventName"], int(row["ts"].timestamp()), cell((row["profile"] or {}).get("identity")))
            ] += 1
    assert got == expected


@pytest.mark.parametrize(
    "fmt, compression", [("json", "none"), ("csv", "gzip"), ("xml", "none"), ("parquet", "snappy")]
)
def test_a_series_larger_than_the_limit_rolls_into_files_under_it(data, tmp_path, capsys, fmt, compression):
    # Parquet's footer alone takes ~11 kB for this wide schema: its limit leaves room for a few rows a file.
    limit = {"json": 6000, "csv": 1200, "xml": 6000, "parquet": 13500}[fmt]
    flags = ["--format", fmt, "--compression", compression, "--events", "Charged"]
    status, _, err = export(
        capsys, *flags, "--max_file_bytes", str(limit), source=f"{data}/events-*", output=tmp_path / "small"
    )
    assert status == 0, err
    status, _, err = export(capsys, *flags, source=f"{data}/events-*", output=tmp_path / "big")
    assert status == 0, err
    small = manifest(tmp_path / "small")
    big = manifest(tmp_path / "big")
    by_series: dict[tuple, list] = {}
    for f in small["files"]:
        assert f["bytes"] <= limit
        assert (tmp_path / "small" / f["name"]).stat().st_size == f["bytes"]
        m = naming.NAME_RE.match(f["name"])
        by_series.setdefault((m["event"], m["date"]), []).append(int(m["idx"]))
    assert all(sorted(idx) == list(range(len(idx))) for idx in by_series.values())
    assert max(len(v) for v in by_series.values()) >= (2 if fmt == "parquet" else 3), "small enough to roll"
    assert small["totals"]["bad"] == big["totals"]["bad"], "no record is too large for these limits"
    assert small["records_per_event_and_date"] == big["records_per_event_and_date"]
    if fmt == "json":  # the files of a series, concatenated, hold the single file's records in order
        for f in big["files"]:
            m = naming.NAME_RE.match(f["name"])
            parts = [g for g in small["files"] if g["date"] == f["date"]]
            parts.sort(key=lambda g: int(naming.NAME_RE.match(g["name"])["idx"]))
            lines = b"".join(
                b"\n".join((tmp_path / "small" / g["name"]).read_bytes().split(b"\n")[1:]) for g in parts
            )
            whole = b"\n".join((tmp_path / "big" / f["name"]).read_bytes().split(b"\n")[1:])
            assert lines == whole, m["date"]


def test_rerun_writes_identical_objects(data, tmp_path, capsys):
    for out in ("a", "b"):
        status, _, err = export(
            capsys,
            "--format",
            "csv",
            "--compression",
            "gzip",
            "--max_file_bytes",
            "8000",
            source=f"{data}/events-*",
            output=tmp_path / out,
        )
        assert status == 0, err
    # and once more over the first output: same names, same bytes, nothing added
    before = {
        p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()
    }
    status, _, err = export(
        capsys,
        "--format",
        "csv",
        "--compression",
        "gzip",
        "--max_file_bytes",
        "8000",
        source=f"{data}/events-*",
        output=tmp_path / "a",
    )
    assert status == 0, err
    after = {
        p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()
    }
    other = {
        p.relative_to(tmp_path / "b"): p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file()
    }
    assert before == after
    manifest_path = Path(naming.manifest_name("req_1", RUN_TS))
    m_a, m_b = json.loads(before.pop(manifest_path)), json.loads(other.pop(manifest_path))
    assert m_a["request"].pop("output") != m_b["request"].pop("output")
    assert m_a == m_b, "the manifests differ only by the output location"
    assert before == other
    assert len(before) > 20


def test_six_recurring_runs_export_a_day_exactly_once(data, tmp_path, capsys):
    good, _ = input_records(data)
    day_start = END - 86400
    seen = Counter()
    for k in range(1, 7):
        run_ts = datetime.fromtimestamp(day_start + 4 * 3600 * k, UTC).strftime("%Y%m%d%H%M%S")
        status, _, err = export(
            capsys,
            "--frequency",
            "recurring",
            "--every_hours",
            "4",
            "--run_timestamp",
            run_ts,
            source=f"{data}/events-*",
            output=tmp_path,
        )
        assert status == 0, err
        for f in manifest(tmp_path, run_ts)["files"]:
            lines = (tmp_path / f["name"]).read_bytes().split(b"\n")[1:-1]
            for line in lines:
                seen[(f["event"], f["date"], json.dumps(json.loads(line), sort_keys=True))] += 1
    captured = [r for r in good if day_start <= r.get("capturedAt", r["ts"]) < END]
    late = [r for r in captured if day(r["ts"]) != day(r.get("capturedAt", r["ts"]))]
    assert late, "the sample holds late captures"
    assert seen == expected_lines(captured)


def test_profiles_export_latest_version_of_each(data, tmp_path, capsys):
    status, _, err = export(
        capsys, "--export_type", "profiles", "--format", "json", source=f"{data}/profiles-*", output=tmp_path
    )
    assert status == 0, err
    good, bad = input_records(data, "profiles")
    latest: dict[str, dict] = {}
    for r in good:
        cur = latest.get(r["objectId"])
        if cur is None or r["updatedAt"] > cur["updatedAt"]:
            latest[r["objectId"]] = r
    files = data_files(tmp_path)
    assert [p.name for p in files] == [f"req_1-{RUN_TS}-profiles-20261127-0-{DB}.json"]
    lines = files[0].read_bytes().split(b"\n")
    assert lines[0] == b"profiles"
    rows = [json.loads(x) for x in lines[1:-1]]
    assert len(rows) == len({r["objectId"] for r in rows}) == len(latest)
    for row in rows:
        assert row["ts"] == stamp(latest[row["objectId"]]["updatedAt"])
    m = manifest(tmp_path)
    assert m["totals"]["superseded_profile_versions"] == len(good) - len(latest)
    assert m["totals"]["bad"] == bad == 4


def test_over_max_bad_records_fails_without_manifest(data, tmp_path, capsys):
    status, _, err = export(capsys, "--max_bad_records", "5", source=f"{data}/events-*", output=tmp_path)
    assert status == 1
    assert "12 bad records, more than --max_bad_records 5" in err
    assert not (tmp_path / "_manifests").exists()
    status, _, err = export(capsys, "--max_bad_records", "12", source=f"{data}/events-*", output=tmp_path)
    assert status == 0, err
    assert manifest(tmp_path)["totals"]["bad"] == 12


def test_objects_left_by_a_failed_attempt_are_deleted(data, tmp_path, capsys):
    stale = tmp_path / f"req_1-{RUN_TS}-Charged-20261125-7-{DB}.json"
    stale_err = tmp_path / "_errors" / f"req_1-{RUN_TS}-errors-5.jsonl"
    other_run = tmp_path / f"req_1-20261101000000-Charged-20261125-0-{DB}.json"
    for p in (stale, stale_err, other_run):
        p.parent.mkdir(exist_ok=True)
        p.write_text("left over")
    status, _, err = export(capsys, source=f"{data}/events-*", output=tmp_path)
    assert status == 0, err
    assert not stale.exists() and not stale_err.exists()
    assert other_run.exists()


def test_empty_input_is_done_with_no_files(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    status, _, err = export(capsys, source=str(tmp_path / "empty.jsonl"), output=tmp_path / "out")
    assert status == 0, err
    m = manifest(tmp_path / "out")
    assert m["files"] == [] and m["totals"]["records_read"] == 0 and m["status"] == "Done"


def test_selected_events_and_timezone(data, tmp_path, capsys):
    events = json.dumps(["Level-Up/Bonus", "50% Off Viewed", "購入完了"])
    status, _, err = export(
        capsys, "--events", events, "--timezone", "Asia/Kolkata", source=f"{data}/events-*", output=tmp_path
    )
    assert status == 0, err
    good, _ = input_records(data)
    wanted = [r for r in good if r["eventName"] in json.loads(events)]
    names = set()
    total = 0
    for path in data_files(tmp_path):
        m = naming.NAME_RE.match(path.name)
        names.add(naming.decode_event_name(m["event"]))
        total += len(path.read_bytes().split(b"\n")) - 2
    assert names == set(json.loads(events)) and total == len(wanted)
    t = manifest(tmp_path)["totals"]
    # bad records of events not selected are not this export's: they count as out of scope, not as bad
    assert t["records_read"] == t["exported"] + t["bad"] + t["out_of_scope"] == 1512
    assert t["out_of_scope"] >= len(good) - len(wanted) and t["bad"] < 12


INVALID = [
    (["--format", "yaml"], "--format 'yaml' is not valid"),
    (["--frequency", "recurring", "--every_hours", "5"], "--every_hours 5 is not valid"),
    (["--start", "20261126", "--end", "20261125"], "--start must be before --end"),
    (["--start", "20261001", "--end", "20261125"], "more than 45 days"),
    (["--output", "gs://no-such-bucket-here/x"], "bucket"),
    (["--source", "/nonexistent/*.jsonl"], "matches no file"),
    (["--request_id", "bad-id"], "--request_id"),
    (["--database_id", "bad id"], "--database_id"),
    (["--compression", "zstd"], "--compression 'zstd' is not valid"),
    (["--timezone", "Mars/Olympus"], "--timezone"),
    (["--max_file_bytes", "10"], "--max_file_bytes must be at least"),
    (["--formt", "json"], "unknown flag --formt"),
]


@pytest.mark.parametrize("flags, message", INVALID, ids=[m for _, m in INVALID])
def test_invalid_request_exits_2_before_reading_or_writing(
    data, tmp_path, capsys, gcs_emulator, flags, message
):
    argv = {
        "--source": f"{data}/events-*",
        "--output": str(tmp_path / "out"),
        "--request_id": "req_1",
        "--database_id": DB,
        "--run_timestamp": RUN_TS,
        "--start": "20261125",
        "--end": "20261127",
    }
    extra = []
    for k, v in zip(flags[::2], flags[1::2], strict=True):
        if k in argv:
            argv[k] = v
        else:
            extra += [k, v]
    if "--frequency" in extra:
        argv.pop("--start")
        argv.pop("--end")
    status = run([x for kv in argv.items() for x in kv] + extra)
    out, err = capsys.readouterr()
    assert status == 2
    assert message in err, err
    assert "Traceback" not in err and out == ""
    assert all(line.startswith("invalid request: ") for line in err.strip().splitlines())
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.emulator
def test_export_from_and_to_gcs_emulator(data, gcs_bucket, capsys):
    from transforms.storage import gcs_client, open_storage

    bucket = gcs_client().bucket(gcs_bucket)
    for path in sorted(data.glob("events-*")):
        bucket.blob(f"in/{path.name}").upload_from_filename(str(path))
    status, out, err = export(
        capsys,
        "--format",
        "parquet",
        source=f"gs://{gcs_bucket}/in/events-*",
        output=f"gs://{gcs_bucket}/exports/daily",
    )
    assert status == 0, err
    store = open_storage(f"gs://{gcs_bucket}/exports/daily")
    m = json.loads(store.read_bytes(naming.manifest_name("req_1", RUN_TS)))
    listed = {o.name: o for o in store.list("")}
    for f in m["files"] + m["errors"]:
        assert listed[f["name"]].size == f["bytes"]
        assert listed[f["name"]].crc32c == f["crc32c"], "the manifest's CRC32C is the one GCS reports"
    good, bad = input_records(data)
    assert m["totals"]["exported"] == len(good) and m["totals"]["bad"] == bad
    rows = sum(pq.read_table(io.BytesIO(store.read_bytes(f["name"]))).num_rows for f in m["files"])
    assert rows == len(good)
    assert os.environ["STORAGE_EMULATOR_HOST"].startswith("http://127.0.0.1:")


def test_recurring_run_without_timestamp_exports_the_settled_window_once(data, tmp_path, capsys):
    now = END + 15 * 60 + 30  # 00:15:30 on the 27th: the window [20:00, 24:00) of the 26th has settled
    argv = [
        "--source",
        f"{data}/events-*",
        "--output",
        str(tmp_path),
        "--request_id",
        "req_1",
        "--database_id",
        DB,
        "--frequency",
        "recurring",
        "--every_hours",
        "4",
    ]
    assert run(argv, now=now) == 0
    first = capsys.readouterr().out
    m = manifest(tmp_path, "20261127000000")
    assert m["window"] == {
        "field": "capturedAt",
        "start": "2026-11-26T20:00:00Z",
        "end": "2026-11-27T00:00:00Z",
    }
    assert m["totals"]["exported"] > 0 and "Done" in first
    before = sorted(p.name for p in data_files(tmp_path))
    assert run(argv, now=now + 60) == 0
    assert "already exported" in capsys.readouterr().out
    assert sorted(p.name for p in data_files(tmp_path)) == before
    assert run(argv, now=END - 60) == 0  # before the settle delay: the window before it
    assert (tmp_path / naming.manifest_name("req_1", "20261126200000")).exists()


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_streaming_merge_of_large_series_writes_the_same_bytes(data, tmp_path, capsys, monkeypatch, fmt):
    from transforms import write

    flags = ["--format", fmt, "--max_file_bytes", "9000"]
    status, _, err = export(capsys, *flags, source=f"{data}/events-*", output=tmp_path / "memory" / "out")
    assert status == 0, err
    monkeypatch.setattr(write, "IN_MEMORY_SERIES_BYTES", 0)  # every series merged from its runs as a stream
    status, _, err = export(capsys, *flags, source=f"{data}/events-*", output=tmp_path / "stream" / "out")
    assert status == 0, err
    a = {
        p.relative_to(tmp_path / "memory"): p.read_bytes()
        for p in (tmp_path / "memory").rglob("*")
        if p.is_file()
    }
    b = {
        p.relative_to(tmp_path / "stream"): p.read_bytes()
        for p in (tmp_path / "stream").rglob("*")
        if p.is_file()
    }
    manifest_path = Path("out") / naming.manifest_name("req_1", RUN_TS)
    ma, mb = json.loads(a.pop(manifest_path)), json.loads(b.pop(manifest_path))
    ma["request"].pop("output"), mb["request"].pop("output")
    assert ma == mb
    assert a == b and len(a) > 50


@pytest.mark.parametrize("layout", ["avro", "parquet"])
def test_avro_and_parquet_sources_export_like_json_lines(data, tmp_path, capsys, layout):
    """The typed layouts (transforms/schemas/README.md) give the same export as the JSON Lines they hold."""
    good, _ = input_records(data)
    writer = generate.write_avro if layout == "avro" else generate.write_parquet
    src = tmp_path / "src"
    src.mkdir()
    writer(src / f"events.{layout}", [json.dumps(r).encode() for r in good], "events")
    (src / "events.jsonl").write_bytes(b"\n".join(json.dumps(r).encode() for r in good) + b"\n")
    for name, pattern in ((layout, f"events.{layout}"), ("jsonl", "events.jsonl")):
        status, _, err = export(capsys, source=str(src / pattern), output=tmp_path / name / "out")
        assert status == 0, err
    typed, plain = manifest(tmp_path / layout / "out"), manifest(tmp_path / "jsonl" / "out")
    assert typed["totals"]["exported"] == plain["totals"]["exported"] == len(good)
    assert typed["records_per_event_and_date"] == plain["records_per_event_and_date"]
    # identity is a long in Avro but text in Parquet (no union type): compare the Avro files byte for byte
    if layout == "avro":
        assert [f["crc32c"] for f in typed["files"]] == [f["crc32c"] for f in plain["files"]]


def test_profiles_from_avro_keep_the_latest_version(data, tmp_path, capsys):
    good, _ = input_records(data, "profiles")
    generate.write_avro(tmp_path / "profiles.avro", [json.dumps(r).encode() for r in good], "profiles")
    status, _, err = export(
        capsys, "--export_type", "profiles", source=str(tmp_path / "profiles.avro"), output=tmp_path / "out"
    )
    assert status == 0, err
    m = manifest(tmp_path / "out")
    assert m["totals"]["exported"] == len({r["objectId"] for r in good})
    assert m["totals"]["superseded_profile_versions"] == len(good) - m["totals"]["exported"]


def test_json_without_header_and_csv_formula_guard(tmp_path, capsys):
    rec = {
        "eventName": "=HYPERLINK",
        "ts": START + 60,
        "eventProps": {"a": "=1+1", "b": -5, "c": "@x", "d": "ok"},
    }
    (tmp_path / "in.jsonl").write_text(json.dumps(rec) + "\n")
    status, _, err = export(
        capsys, "--json_header", "false", source=str(tmp_path / "in.jsonl"), output=tmp_path / "j"
    )
    assert status == 0, err
    [path] = data_files(tmp_path / "j")
    assert (
        path.read_bytes()
        == json.dumps(
            {"ts": stamp(START + 60), "eventProps": rec["eventProps"]}, separators=(",", ":")
        ).encode()
        + b"\n"
    )
    status, _, err = export(
        capsys,
        "--format",
        "csv",
        "--csv_formula_guard",
        "true",
        source=str(tmp_path / "in.jsonl"),
        output=tmp_path / "c",
    )
    assert status == 0, err
    [path] = data_files(tmp_path / "c")
    header, rows = read_csv(path)
    assert rows == [
        {
            "eventName": "'=HYPERLINK",
            "ts": str(stamp(START + 60)),
            "eventProps.a": "'=1+1",
            "eventProps.b": "-5",
            "eventProps.c": "'@x",
            "eventProps.d": "ok",
        }
    ]


def test_xml_forbidden_characters_are_replaced_and_counted(tmp_path, capsys):
    recs = [
        {"eventName": "Search", "ts": START + 1, "eventProps": {"q": "a\x0bb\x0c", "k\x01": 1}},
        {"eventName": "Search", "ts": START + 2, "profile": {"bad key": "x\x02", "ok": "<&>"}},
        {"eventName": "Search", "ts": START + 2, "eventProps": {"q": "plain"}},
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    status, _, err = export(
        capsys, "--format", "xml", source=str(tmp_path / "in.jsonl"), output=tmp_path / "x"
    )
    assert status == 0, err
    [path] = data_files(tmp_path / "x")
    root = etree.fromstring(path.read_bytes())
    events = list(root)
    assert [e.findtext("ts") for e in events] == [
        str(stamp(START + 1)),
        str(stamp(START + 2)),
        str(stamp(START + 2)),
    ]
    first = events[0].find("eventProps")
    assert [(e.findtext("key"), e.findtext("value")) for e in first] == [
        ("q", "a\ufffdb\ufffd"),
        ("k\ufffd", "1"),
    ]
    profile = next(e for e in events if e.find("profile") is not None).find("profile")
    assert (
        profile.find("entry").findtext("key") == "bad key"
        and profile.find("entry").findtext("value") == "x\ufffd"
    )
    assert profile.findtext("ok") == "<&>"
    assert manifest(tmp_path / "x")["xml_replaced_chars"] == 4


def test_profiles_as_xml(data, tmp_path, capsys):
    status, _, err = export(
        capsys, "--export_type", "profiles", "--format", "xml", source=f"{data}/profiles-*", output=tmp_path
    )
    assert status == 0, err
    good, _ = input_records(data, "profiles")
    [path] = data_files(tmp_path)
    root = etree.fromstring(path.read_bytes())
    assert root.tag == "Profiles"
    ids = [p.findtext("objectId") for p in root]
    assert sorted(ids) == sorted({r["objectId"] for r in good})
    stamps = [int(p.findtext("ts")) for p in root]
    assert stamps == sorted(stamps)


def test_a_byte_order_mark_at_the_start_of_a_file_is_not_part_of_the_first_record(tmp_path, capsys):
    rec = {"eventName": "App Launched", "ts": START + 5}
    (tmp_path / "bom.jsonl").write_bytes(
        b"\xef\xbb\xbf" + json.dumps(rec).encode() + b"\n" + json.dumps(rec).encode()
    )
    status, _, err = export(capsys, source=str(tmp_path / "bom.jsonl"), output=tmp_path / "out")
    assert status == 0, err
    assert manifest(tmp_path / "out")["totals"] == manifest(tmp_path / "out")["totals"] | {
        "exported": 2,
        "bad": 0,
    }


def _records_by_series(folder: Path, fmt: str) -> dict[tuple[str, str], list[tuple[int, object, list]]]:
    """(event, date) -> [(file index, its header or schema, its records)] of an export's data files."""
    out: dict = {}
    for p in data_files(folder):
        m = naming.NAME_RE.match(p.name)
        assert m, p.name
        if fmt == "parquet":
            table = pq.read_table(p)
            head, body = str(table.schema), table.to_pylist()
        elif fmt == "csv":
            rows = list(csv.reader(io.StringIO(p.read_bytes().decode(), newline="")))
            head, body = rows[0], rows[1:]
        else:
            lines = p.read_bytes().split(b"\n")
            assert lines[-1] == b""
            if fmt == "json":
                head, body = lines[0], lines[1:-1]  # the event name, then the records
            else:
                head, body = lines[:2], lines[2:-2]
                assert (
                    head == [b'<?xml version="1.0" encoding="UTF-8"?>', b"<Events>"]
                    and lines[-2] == b"</Events>"
                )
        key = (naming.decode_event_name(m["event"]), m["date"])
        out.setdefault(key, []).append((int(m["idx"]), head, body))
    return out


@pytest.mark.parametrize("fmt", ["json", "xml", "csv", "parquet"])
def test_a_series_written_in_shards_keeps_its_order_and_numbers_files_0_to_n(
    data, tmp_path, capsys, monkeypatch, fmt
):
    flags = ["--format", fmt, "--max_file_bytes", "9000"]
    status, _, err = export(capsys, *flags, source=f"{data}/events-*", output=tmp_path / "whole")
    assert status == 0, err
    monkeypatch.setenv("CTEXPORT_SHARD_BYTES", "4000")  # every series of more than 4000 data bytes
    status, _, err = export(capsys, *flags, source=f"{data}/events-*", output=tmp_path / "sharded")
    assert status == 0, err
    assert " shards" in err
    whole, sharded = (
        _records_by_series(tmp_path / "whole", fmt),
        _records_by_series(tmp_path / "sharded", fmt),
    )
    assert whole.keys() == sharded.keys()
    more_files = 0
    for key, files in sharded.items():
        files.sort(key=lambda f: f[0])
        assert [i for i, _, _ in files] == list(range(len(files))), f"{key}: files numbered 0..n-1"
        heads = {str(h) for _, h, _ in files} | {str(h) for _, h, _ in whole[key]}
        assert len(heads) == 1, f"{key}: every file has the series' header or schema"
        in_order = [r for _, _, body in files for r in body]
        assert in_order == [r for _, _, body in sorted(whole[key], key=lambda f: f[0]) for r in body], (
            f"{key}: same records, same order"
        )
        more_files += len(files) - len(whole[key])
    if fmt != "parquet":  # Parquet's rows per file are estimated per writer: its file count may go either way
        assert more_files > 0, "shards did split series"
    assert all(p.stat().st_size <= 9000 for p in data_files(tmp_path / "sharded"))
    m = manifest(tmp_path / "sharded")
    assert sorted(f["name"] for f in m["files"]) == sorted(p.name for p in data_files(tmp_path / "sharded"))
    assert not [p for p in (tmp_path / "sharded").rglob("*") if "~" in p.name], "no shard part left"
