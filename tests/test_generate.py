"""The sample generator: determinism, counts, windows, bad records, and the typed layouts read back."""

from __future__ import annotations

import collections
import gzip
import json
import math
import re

import fastavro
import pyarrow.parquet as pq
import pytest

from ctexport import generate as g

START = 1704672000  # 2024-01-08T00:00:00Z
END = START + 3 * 86400
TS_LIMIT = 253402300800
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _int64(text: str) -> int:
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ValueError("integer beyond 64 bits")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} literal")


def _loads(line: bytes):
    """An independent strict parser: stdlib json, no NaN/Infinity, 64-bit integers only."""
    return json.loads(line.decode("utf-8"), parse_int=_int64, parse_constant=_no_constant)


def _event_problem(line: bytes) -> str | None:
    """Why an event line is bad by SPEC section 1, or None when it is good."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "utf8"
    try:
        rec = json.loads(text, parse_int=_int64, parse_constant=_no_constant)
    except ValueError as exc:
        return "number" if "literal" in str(exc) or "64 bits" in str(exc) else "json"
    name = rec.get("eventName")
    if "eventName" not in rec:
        return "name missing"
    if not isinstance(name, str):
        return "name type"
    if name == "":
        return "name empty"
    if len(name) > 512:
        return "name long"
    if CONTROL.search(name):
        return "name control"
    if "ts" not in rec:
        return "ts missing"
    ts = rec["ts"]
    if type(ts) is not int:
        return "ts type"
    if not 0 <= ts < TS_LIMIT:
        return "ts range"
    if not isinstance(rec.get("eventProps", {}), dict):
        return "props type"
    return None


def _profile_problem(line: bytes) -> str | None:
    try:
        rec = _loads(line)
    except ValueError:
        return "json"
    if not isinstance(rec.get("objectId"), str):
        return "objectId"
    updated = rec.get("updatedAt")
    if updated is None:
        return "updatedAt missing"
    if not (type(updated) is int and 0 <= updated < TS_LIMIT):
        return "updatedAt range"
    return None


def _events(n=2000, **kw):
    kw.setdefault("start_ts", START)
    kw.setdefault("end_ts", END)
    return list(g.generate_events(n, **kw))


def _profiles(n=1300, **kw):
    kw.setdefault("start_ts", START)
    kw.setdefault("end_ts", END)
    return list(g.generate_profiles(n, **kw))


# --- events -----------------------------------------------------------------------------------------------


def test_events_are_deterministic_for_a_seed():
    assert _events(500, seed=3, bad=13) == _events(500, seed=3, bad=13)
    assert _events(500, seed=3) != _events(500, seed=4)


def test_event_count_window_and_capture_times():
    lines = _events(5000, late_fraction=0.05)
    assert len(lines) == 5000
    recs = [_loads(line) for line in lines]
    assert all(_event_problem(line) is None for line in lines)
    assert all(START <= r["ts"] < END for r in recs)
    delays = [r["capturedAt"] - r["ts"] for r in recs if "capturedAt" in r]
    assert min(delays) >= 0 and max(delays) <= 2 * 86400
    late = sum(d >= 3600 for d in delays)
    assert 0.035 * 5000 < late < 0.065 * 5000
    assert sum(d < 60 for d in delays) > 0.9 * 5000
    # a few carry no capturedAt (it defaults to ts)
    assert 0 < 5000 - len(delays) < 100


def test_bad_events_one_of_each_kind_spread_and_good_lines_unchanged():
    kinds = len(g.EVENT_BAD_KINDS)
    lines = _events(3000, bad=2 * kinds)
    assert len(lines) == 3000 + 2 * kinds
    problems = [_event_problem(line) for line in lines]
    bad_at = [i for i, p in enumerate(problems) if p]
    assert len(bad_at) == 2 * kinds
    # spread: not bunched at one end
    assert bad_at[0] < 400 and bad_at[-1] > len(lines) - 400
    assert collections.Counter(p for p in problems if p) == {
        "json": 2,
        "utf8": 2,
        "name missing": 2,
        "name type": 2,
        "ts range": 2,  # milliseconds
        "ts type": 2,  # a string
        "ts missing": 2,
        "number": 4,  # NaN/Infinity and a 20-digit integer
        "props type": 2,
        "name empty": 2,
        "name control": 2,
        "name long": 2,
    }
    assert [line for line, p in zip(lines, problems, strict=True) if p is None] == _events(3000)


def test_bad_numbers_are_the_literal_kinds_named():
    lines = _events(100, bad=len(g.EVENT_BAD_KINDS))
    text = b"\n".join(lines)
    assert b'"Price":NaN' in text
    assert b'"Amount":99999999999999999999' in text
    # orjson would read the 20-digit integer as a float: the typed writers must still reject it
    assert list(g.typed_rows([line for line in lines if b"99999999999999999999" in line], "events")) == []


def test_events_look_like_clevertap_data():
    recs = [_loads(line) for line in _events(6000)]
    names = {r["eventName"] for r in recs}
    for name in (
        "App Launched",
        "App Installed",
        "App Uninstalled",
        "Notification Sent",
        "Notification Viewed",
        "Notification Clicked",
        "UTM Visited",
        "Session Concluded",
        "Charged",
        "Search",
        "Rated 5★",
        "Level-Up/Bonus",
        "Kauf abgeschlossen",
        "購入完了",
        "50% Off Viewed",
    ):
        assert name in names
    assert {r["profile"]["platform"] for r in recs} == {"Android", "iOS", "Web"}
    web = [r for r in recs if r["profile"]["platform"] == "Web" and "deviceInfo" in r]
    assert web and all("browser" in r["deviceInfo"] for r in web)
    mobile = [r for r in recs if r["profile"]["platform"] != "Web" and "deviceInfo" in r]
    assert all(
        {"make", "model", "os_version", "app_version", "sdk_version"} <= r["deviceInfo"].keys()
        for r in mobile
    )
    assert all("ct_network_type" in r["eventProps"] for r in mobile)
    charged = [r["eventProps"] for r in recs if r["eventName"] == "Charged"]
    assert charged
    for props in charged:
        assert {"Amount", "Currency", "Payment mode", "Items"} <= props.keys()
        for item in props["Items"]:
            assert item.keys() == {"Category", "Product name", "Quantity", "Price"}
    per_event = [
        len(r.get("eventProps", {})) + len(r.get("deviceInfo", {})) + len(r["profile"]) for r in recs
    ]
    assert 18 <= sum(per_event) / len(per_event) <= 35
    values = [v for r in recs for v in r["eventProps"].values()]
    types = {type(v) for v in values}
    assert {str, int, float, bool, list, dict, type(None)} <= types
    assert any(isinstance(v, str) and not v.isascii() for v in values)


def test_zipf_makes_one_name_hot():
    def shares(zipf):
        counts = collections.Counter(_loads(line)["eventName"] for line in _events(8000, zipf=zipf))
        (top, count), *_ = counts.most_common(1)
        return top, count / 8000, len(counts)

    top, share, distinct = shares(True)
    assert top == "App Launched" and share > 0.25 and distinct >= 30
    _, share, distinct = shares(False)
    assert share < 0.05 and distinct == len(g.EVENT_NAMES) == 40


def test_window_is_validated():
    with pytest.raises(ValueError):
        next(g.generate_events(1, start_ts=END, end_ts=START))


# --- profiles ---------------------------------------------------------------------------------------------


def test_profiles_have_versions_and_updated_at_in_window():
    lines = _profiles(1300, versions=1.3)
    assert lines == _profiles(1300, versions=1.3)
    recs = [_loads(line) for line in lines]
    assert len(recs) == 1300
    by_id = collections.defaultdict(list)
    for r in recs:
        assert START <= r["updatedAt"] < END
        assert r["createdAt"] is None or r["createdAt"] <= r["updatedAt"]
        by_id[r["objectId"]].append(r["updatedAt"])
    assert len(by_id) == 1000
    assert sum(len(v) > 1 for v in by_id.values()) > 150
    # file order is not version order: "last line wins" would be wrong for some objectIds
    assert any(v != sorted(v) for v in by_id.values())


def test_events_point_at_generated_profiles():
    profile_ids = {_loads(line)["objectId"] for line in _profiles(1300)}
    event_ids = {_loads(line)["profile"]["objectId"] for line in _events(3000, profiles=1000)}
    assert event_ids <= profile_ids


def test_bad_profiles():
    lines = _profiles(400, bad=8)
    assert len(lines) == 408
    problems = collections.Counter(_profile_problem(line) for line in lines)
    assert problems == {None: 400, "objectId": 2, "updatedAt missing": 2, "updatedAt range": 2, "json": 2}
    assert [line for line in lines if _profile_problem(line) is None] == _profiles(400)


# --- writers ----------------------------------------------------------------------------------------------


def _expected_event(rec):
    return {
        "eventName": rec["eventName"],
        "ts": rec["ts"],
        "capturedAt": rec.get("capturedAt"),
        "profile": rec.get("profile"),
        "deviceInfo": rec.get("deviceInfo"),
        "eventProps": rec.get("eventProps"),
    }


def _decoded_event(row):
    row = dict(row)
    for key in ("profile", "deviceInfo", "eventProps"):
        if row[key] is not None:
            row[key] = json.loads(row[key])
    return row


PROFILE_FIELDS = [
    "objectId",
    "identity",
    "all_identities",
    "name",
    "email",
    "phone",
    "gender",
    "dob",
    "platform",
    "profileProps",
    "createdAt",
    "updatedAt",
]


def _decoded_profile(row):
    row = dict(row)
    if row["profileProps"] is not None:
        row["profileProps"] = json.loads(row["profileProps"])
    return row


def test_jsonl_gzip_is_reproducible(tmp_path):
    lines = _events(300, bad=13)
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    assert g.write_jsonl(a, lines, gzip=True) == 313
    g.write_jsonl(b, lines, gzip=True)
    data = a.read_bytes()
    assert data == b.read_bytes()
    assert data[4:8] == b"\0\0\0\0"  # mtime 0
    assert not data[3] & 0x08  # no file name
    assert gzip.decompress(data) == b"".join(line + b"\n" for line in lines)
    plain = tmp_path / "c.jsonl"
    assert g.write_jsonl(plain, lines) == 313
    assert plain.read_bytes().split(b"\n")[:-1] == lines


def test_avro_events_read_back_equal_the_good_records(tmp_path):
    lines = _events(1500, bad=13)
    path = tmp_path / "events.avro"
    assert g.write_avro(path, lines, "events") == 1500
    with open(path, "rb") as f:
        reader = fastavro.reader(f)
        assert reader.codec == "deflate"
        assert reader.writer_schema["name"] == "ctexport.Event"
        assert [fld["name"] for fld in reader.writer_schema["fields"]] == [
            "eventName",
            "ts",
            "capturedAt",
            "profile",
            "deviceInfo",
            "eventProps",
        ]
        rows = list(reader)
    good = [_loads(line) for line in lines if _event_problem(line) is None]
    assert [_decoded_event(r) for r in rows] == [_expected_event(r) for r in good]
    assert any(r["capturedAt"] is None for r in rows) and any(r["deviceInfo"] is None for r in rows)
    again = tmp_path / "again.avro"
    g.write_avro(again, lines, "events")
    assert again.read_bytes() == path.read_bytes()


def test_avro_profiles_read_back_equal_the_good_records(tmp_path):
    lines = _profiles(800, bad=8)
    path = tmp_path / "profiles.avro"
    assert g.write_avro(path, lines, "profiles") == 800
    with open(path, "rb") as f:
        reader = fastavro.reader(f)
        assert [fld["name"] for fld in reader.writer_schema["fields"]] == PROFILE_FIELDS
        rows = list(reader)
    good = [_loads(line) for line in lines if _profile_problem(line) is None]
    assert [_decoded_profile(r) for r in rows] == [{k: r.get(k) for k in PROFILE_FIELDS} for r in good]
    assert any(isinstance(r["identity"], int) for r in rows)  # the long branch of the union


def test_parquet_events_read_back_equal_the_good_records(tmp_path):
    lines = _events(1500, bad=13)
    path = tmp_path / "events.parquet"
    assert g.write_parquet(path, lines, "events", row_group_size=400) == 1500
    table = pq.read_table(path)
    assert table.schema.names == ["eventName", "ts", "capturedAt", "profile", "deviceInfo", "eventProps"]
    assert str(table.schema.field("ts").type) == "int64"
    assert pq.ParquetFile(path).metadata.num_row_groups == math.ceil(1500 / 400)
    good = [_loads(line) for line in lines if _event_problem(line) is None]
    assert [_decoded_event(r) for r in table.to_pylist()] == [_expected_event(r) for r in good]


def test_parquet_profiles_read_back_with_identity_as_text(tmp_path):
    lines = _profiles(800, bad=8)
    path = tmp_path / "profiles.parquet"
    assert g.write_parquet(path, lines, "profiles") == 800
    table = pq.read_table(path)
    assert table.schema.names == PROFILE_FIELDS
    good = [_loads(line) for line in lines if _profile_problem(line) is None]
    expected = []
    for r in good:
        row = {k: r.get(k) for k in PROFILE_FIELDS}
        row["identity"] = None if row["identity"] is None else str(row["identity"])
        expected.append(row)
    assert [_decoded_profile(r) for r in table.to_pylist()] == expected


def test_writers_accept_parsed_records_and_reject_unrepresentable_ones(tmp_path):
    good = _loads(_events(1)[0])
    nan = dict(good, eventProps={"x": float("nan")})
    huge = dict(good, eventProps={"x": 2**64})
    millis = dict(good, ts=good["ts"] * 1000)
    path = tmp_path / "e.avro"
    assert g.write_avro(path, [good, nan, huge, millis, "not json"], "events") == 1
    with open(path, "rb") as f:
        assert [_decoded_event(r) for r in fastavro.reader(f)] == [_expected_event(good)]
    with pytest.raises(ValueError):
        g.write_avro(path, [], "users")


# --- command line -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "avro", "parquet"])
def test_cli_writes_files_and_reports_them(tmp_path, capsys, fmt):
    out = tmp_path / "out"
    argv = ["--out", str(out), "--events", "600", "--profiles", "130", "--days", "2", "--end", "20240110"]
    assert g.main(argv + ["--format", fmt, "--files", "3", "--bad", "13"]) == 0
    report = capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"{kind}-{i:05d}.{fmt}" for kind in ("events", "profiles") for i in range(3)]
    if fmt.startswith("jsonl"):
        read = gzip.open if fmt.endswith(".gz") else open
        lines = []
        for i in range(3):
            with read(out / f"events-{i:05d}.{fmt}", "rb") as f:
                lines += f.read().splitlines()
        assert len(lines) == 613
        assert sum(_event_problem(line) is not None for line in lines) == 13
        recs = [_loads(line) for line in lines if _event_problem(line) is None]
        assert all(1704672000 <= r["ts"] < 1704844800 for r in recs)  # 2024-01-08 .. 2024-01-10
        assert "events: 613 records in 3 files, 13 of them bad" in report
    elif fmt == "avro":
        total = 0
        for i in range(3):
            with open(out / f"events-{i:05d}.avro", "rb") as f:
                total += sum(1 for _ in fastavro.reader(f))
        assert total == 600
        assert "events: 600 records in 3 files (13 bad records skipped: avro cannot hold them)" in report
    else:
        assert sum(pq.read_metadata(out / f"profiles-{i:05d}.parquet").num_rows for i in range(3)) == 130
    for name in names:
        assert f"{out / name}\t" in report


def test_cli_rejects_a_bad_request(tmp_path, capsys):
    assert g.main(["--out", str(tmp_path), "--files", "0", "--end", "tomorrow"]) == 2
    err = capsys.readouterr().err
    assert "--files must be 1 or more" in err and "--end 'tomorrow'" in err
    assert list(tmp_path.iterdir()) == []
