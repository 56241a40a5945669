"""Hostile and broken input, one test per case: what happens to the record, and that the good records beside
it come out untouched, in all four formats.

One input file holds every case between two good "Neighbor" events; it is exported once per format to the GCS
emulator (CSV with the formula guard on). Cases that need their own options (a record larger than
--max_file_bytes, Parquet widening across files, the exact object-name limit, empty and missing sources) run
their own small exports. Files are read back with json, csv, lxml and pyarrow (ctexport/testing/readback.py).
"""

from __future__ import annotations

import base64
import io
import json
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from lxml import etree

from ctexport.testing.readback import (
    parquet_matches,
    read_csv,
    read_json,
    strict_equal,
    text_matches,
    unzip,
    xml_clean,
    xml_forbidden_count,
    xml_object,
)
from pipelines.export import run
from transforms import naming, storage

pytestmark = [pytest.mark.pipeline, pytest.mark.emulator]

END = 1795737600  # 2026-11-27T00:00:00Z
START = END - 2 * 86400
T = START + 7200  # 2026-11-25T02:00:00Z
RUN_TS = "20261127120000"
DB = "W4R-565-5Z4Z"
REQ = "req_bad"
FORMATS = ("json", "csv", "xml", "parquet")
GROUPS = ("profile", "deviceInfo", "eventProps")


def stamp(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y%m%d%H%M%S")


def line(**rec) -> bytes:
    return json.dumps(rec, ensure_ascii=False).encode("utf-8")


def event(name: str, ts: int = T, **groups) -> bytes:
    return line(eventName=name, ts=ts, **groups)


@dataclass
class Case:
    id: str
    lines: list[bytes]
    reason: str | None = (
        None  # the dead letter's reason; None: exported; "" : dead-lettered, reason not pinned
    )
    skipped: bool = False  # not a record at all (blank lines)
    records: list[dict] = field(default_factory=list)  # the good records, parsed


def _ok(case_id: str, *lines: bytes) -> Case:
    return Case(case_id, list(lines), None, records=[json.loads(x) for x in lines])


def _bad(case_id: str, raw: bytes, reason: str) -> Case:
    return Case(case_id, [raw], reason)


_FIT_NAME = "x" * 512
_SLASHES = "/" * 400  # 1,200 bytes once encoded: past GCS's 1,024-byte object names
_FORBIDDEN = {"ctl": "a\x00b\x01c\x0bd\x1fe", "nonchars": "\ufffe\uffff", "allowed": "tab\tlf\ncr\r"}
_KEYS = {"1st": 1, "a b": 2, "ns:key": 3, "<x>": 4, "": 5, "é": 6, "x&y": 7, "ok_name": 8, "xmlish.k-1": 9,
         "new\nline": 10, "quote\"d,comma": 11, "bell\x07": 12}  # fmt: skip
_DEEP: dict = {"leaf": [1, "two", None]}
for _ in range(60):
    _DEEP = {"n": _DEEP, "l": [_DEEP]} if _ % 20 == 0 else {"n": _DEEP}

CASES = [
    # -- unparseable or not a record
    _bad(
        "truncated line",
        b'{"eventName": "Charged", "ts": 1795572000, "eventProps": {"Amount": 12',
        "unparseable",
    ),
    _bad("not JSON at all", b"eventName=Charged ts=1795572000", "unparseable"),
    _bad("trailing garbage", b'{"eventName": "Charged", "ts": 1795572000} xyz', "unparseable"),
    _bad("single quotes", b"{'eventName': 'Charged', 'ts': 1795572000}", "unparseable"),
    _bad("a JSON array", b'[{"eventName": "Charged", "ts": 1795572000}]', "not_an_object"),
    _bad("a JSON string", b'"Charged"', "not_an_object"),
    _bad("JSON null", b"null", "not_an_object"),
    _bad(
        "nested 2,000 levels deep",
        b'{"eventName":"Deep","ts":1795572000,"eventProps":{"d":' + b"[" * 2000 + b"]" * 2000 + b"}}",
        "unparseable",
    ),  # fmt: skip
    Case("a line starting with a byte-order mark", [b"\xef\xbb\xbf" + event("BOM")], ""),
    Case("blank and whitespace-only lines", [b"", b"   ", b"\t"], skipped=True),
    # -- encoding
    _bad(
        "invalid UTF-8 bytes",
        b'{"eventName": "Charged", "ts": 1795572000, "eventProps": {"x": "\xff\xfe"}}',
        "invalid_utf8",
    ),  # fmt: skip
    _bad(
        "overlong UTF-8",
        b'{"eventName": "Charged", "ts": 1795572000, "eventProps": {"x": "\xc0\xaf"}}',
        "invalid_utf8",
    ),  # fmt: skip
    _bad(
        "escaped lone surrogate",
        b'{"eventName": "Charged", "ts": 1795572000, "eventProps": {"x": "\\ud800"}}',
        "invalid_utf8",
    ),  # fmt: skip
    # -- required fields
    _bad("eventName missing", line(ts=T, eventProps={"case": "eventName missing"}), "missing_field"),
    _bad("ts missing", line(eventName="Charged", eventProps={"case": "ts missing"}), "missing_field"),
    _bad("eventName null", line(eventName=None, ts=T), "missing_field"),
    _bad("eventName a number", line(eventName=42, ts=T), "wrong_type"),
    _bad("eventName an object", line(eventName={"n": "Charged"}, ts=T), "wrong_type"),
    _bad("ts a string", line(eventName="Charged", ts=str(T)), "wrong_type"),
    _bad("ts a float", line(eventName="Charged", ts=float(T)), "wrong_type"),
    _bad("ts a boolean", line(eventName="Charged", ts=True), "wrong_type"),
    _bad("eventProps a string", event("Charged", eventProps="Amount=12"), "wrong_type"),
    _bad("profile a list", event("Charged", profile=[{"identity": "u1"}]), "wrong_type"),
    _bad("deviceInfo a number", event("Charged", deviceInfo=7), "wrong_type"),
    # -- numbers
    _bad("NaN", b'{"eventName": "Charged", "ts": 1795572000, "eventProps": {"v": NaN}}', "unparseable"),
    _bad(
        "Infinity",
        b'{"eventName": "Charged", "ts": 1795572000, "eventProps": {"v": Infinity}}',
        "unparseable",
    ),
    _bad(
        "-Infinity",
        b'{"eventName": "Charged", "ts": 1795572000, "eventProps": {"v": -Infinity}}',
        "unparseable",
    ),
    _bad(
        "1e400 (infinite as a double)",
        b'{"eventName": "Charged", "ts": 1795572000, "eventProps": {"v": 1e400}}',
        "unparseable",
    ),  # fmt: skip
    _bad("integer 2**63", event("Charged", eventProps={"v": 2**63}), "integer_outside_64_bits"),
    _bad("integer -2**63-1", event("Charged", eventProps={"v": -(2**63) - 1}), "integer_outside_64_bits"),
    _bad(
        "integer 2**64 deep in a list",
        event("Charged", eventProps={"v": [{"w": [2**64]}]}),
        "integer_outside_64_bits",
    ),  # fmt: skip
    _bad(
        "ts with 30 digits",
        b'{"eventName": "Charged", "ts": 179557200000000000000000000000}',
        "integer_outside_64_bits",
    ),  # fmt: skip
    _ok(
        "64-bit edges and extreme doubles",
        event(
            "Edges",
            eventProps={
                "max": 2**63 - 1,
                "min": -(2**63),
                "big": 1.7976931348623157e308,
                "tiny": 5e-324,
                "neg0": -0.0,
                "e16": 1e16,
                "third": 1 / 3,
            },
        ),
    ),  # fmt: skip
    # -- time
    _bad("ts in milliseconds", event("Charged", ts=T * 1000), "out_of_range"),
    _bad("capturedAt in milliseconds", line(eventName="Charged", ts=T, capturedAt=T * 1000), "out_of_range"),
    _bad("ts negative", event("Charged", ts=-1), "out_of_range"),
    _bad("ts past year 9999", event("Charged", ts=253402300800), "out_of_range"),
    # -- event names
    _bad("empty event name", event(""), "invalid_event_name"),
    _bad("event name with NUL", event("Char\x00ged"), "invalid_event_name"),
    _bad("event name with a tab", event("Added\tTo Cart"), "invalid_event_name"),
    _bad("event name with a newline", event("Added\nTo Cart"), "invalid_event_name"),
    _bad("event name with DEL", event("App Launched\x7f"), "invalid_event_name"),
    _bad("event name of 513 characters", event("x" * 513), "invalid_event_name"),
    _bad("event name past the 1,024-byte object name", event(_SLASHES), "object_name_too_long"),
    _ok("event name with a slash", event("Level/Up")),
    _ok("event name ..", event("..")),
    _ok("event name ../../etc/passwd", event("../../etc/passwd")),
    _ok("event name with % and an escape-like %2F", event("50% Off %2F")),
    _ok("event name with #, ?, *, [, ], backslash and -", event("Tab #2? *[a]\\b-c")),
    _ok("event name with C1 control and line separator", event("Next\u0085Line\u2028Sep")),
    _ok("event name with spaces, emoji and RTL text", event(" Rated 5★ 🎉 مرحبا ")),
    _ok("event name of 512 characters", event(_FIT_NAME)),
    # -- values and keys
    _ok("XML-forbidden control characters", event("Ctl", profile={"bell": "\x07"}, eventProps=_FORBIDDEN)),
    _ok(
        "CSV cells starting with = + - @ tab CR",
        event(
            "Formula",
            profile={"name": '=HYPERLINK("x")'},
            eventProps={
                "eq": "=1+2",
                "plus": "+SUM(A1)",
                "minus": "-2+3",
                "at": "@cmd",
                "tab": "\tx",
                "cr": "\rx",
                "neg": -5,
                "negf": -2.5,
                "plain": "a=b",
            },
        ),
    ),  # fmt: skip
    _ok(
        "property keys that are not XML names",
        event("Keys", profile=_KEYS, deviceInfo=_KEYS, eventProps=_KEYS),
    ),
    _ok(
        "2,000 properties on one record",
        event(
            "Wide",
            eventProps={
                f"p{i:04d}": (i if i % 3 == 0 else f"v{i}" if i % 3 == 1 else [i, {"k": i}])
                for i in range(2000)
            },
        ),
    ),
    _ok("deeply nested values (60 levels)", event("Nested", eventProps={"deep": _DEEP})),
    _ok(
        "empty objects, empty lists and nulls",
        event(
            "Empty", profile={}, deviceInfo=None, eventProps={"a": None, "b": {}, "c": [], "d": [{}], "e": ""}
        ),
    ),  # fmt: skip
    _ok(
        "unicode everywhere",
        event("Unicode", profile={"名前": "王芳"}, eventProps={"😀": "👍🏽 e\u0301 ﷺ \u200f"}),
    ),
    _ok(
        "exact duplicate records",
        event("Twice", eventProps={"same": 1}),
        event("Twice", eventProps={"same": 1}),
    ),
    _ok("a CRLF line end", event("Crlf", eventProps={"v": 1}) + b"\r"),
]
BY_ID = {c.id: c for c in CASES}


def neighbor(case_index: int, side: str) -> dict:
    return {
        "eventName": "Neighbor",
        "ts": T + 2 * case_index + (side == "after"),
        "profile": {"identity": f"n{case_index}"},
        "eventProps": {"case": CASES[case_index].id, "side": side, "n": case_index},
    }


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """The input file, and the line number of each case's first line."""
    folder = tmp_path_factory.mktemp("bad-input")
    out: list[bytes] = []
    first_line = {}
    for i, case in enumerate(CASES):
        out.append(line(**neighbor(i, "before")))
        first_line[case.id] = len(out) + 1
        out.extend(case.lines)
        out.append(line(**neighbor(i, "after")))
    (folder / "events.jsonl").write_bytes(b"\n".join(out) + b"\n")
    return folder / "events.jsonl", first_line


@dataclass
class Export:
    fmt: str
    objects: dict[str, bytes]
    manifest: dict
    dead: list[dict]
    out: str

    def data_files(self) -> dict[str, bytes]:
        return {n: b for n, b in self.objects.items() if not n.startswith("_")}

    def rows(self, event_name: str) -> list:
        """Every record of an event, read back independently, in file order."""
        rows = []
        for name, body in sorted(self.data_files().items(), key=lambda nb: _index(nb[0])):
            m = naming.NAME_RE.match(name)
            if naming.decode_event_name(m["event"]) != event_name:
                continue
            body = unzip(body, name)
            if self.fmt == "json":
                first, records = read_json(body)
                assert first == event_name
                rows += records
            elif self.fmt == "csv":
                rows += read_csv(body)[1]
            elif self.fmt == "xml":
                root = etree.fromstring(body)
                assert root.tag == "Events"
                rows += list(root)
            else:
                rows += pq.read_table(io.BytesIO(body)).to_pylist()
        return rows


def _index(name: str) -> tuple:
    m = naming.NAME_RE.match(name)
    return (m["event"], m["date"], int(m["idx"]))


def export_to(capsys, source: str, output: str, *flags: str) -> tuple[int, str, str]:
    argv = ["--source", source, "--output", output, "--request_id", REQ, "--database_id", DB,
            "--run_timestamp", RUN_TS, "--start", "20261125", "--end", "20261127", *flags]  # fmt: skip
    code = run(argv)
    out, err = capsys.readouterr()
    return code, out, err


def read_back(output: str, fmt: str) -> Export:
    store = storage.open_storage(output)
    objects = {o.name: store.read_bytes(o.name) for o in store.list("")}
    manifest = json.loads(objects[naming.manifest_name(REQ, RUN_TS)])
    dead = [
        json.loads(x)
        for name in sorted(objects)
        if name.startswith(naming.ERRORS_DIR + "/")
        for x in objects[name].splitlines()
    ]
    return Export(fmt, objects, manifest, dead, output)


@pytest.fixture(scope="module")
def exports(source, gcs_emulator) -> dict[str, Export]:
    bucket = f"bad-{uuid.uuid4().hex[:16]}"
    gcs_emulator.create_bucket(bucket)
    capsys = _NoCapture()
    result = {}
    for i, fmt in enumerate(FORMATS):
        flags = ["--format", fmt] + (["--csv_formula_guard", "true"] if fmt == "csv" else [])
        output = f"gs://{bucket}/f{i}"
        code, out, err = export_to(capsys, str(source[0]), output, *flags)
        assert code == 0, err
        result[fmt] = read_back(output, fmt)
    return result


class _NoCapture:
    """capsys for module fixtures (output stays in pytest's own capture)."""

    def readouterr(self):
        return "", ""


# ---- every case, each format ----------------------------------------------------------------------------------


def _good_records() -> list[dict]:
    out = [neighbor(i, side) for i in range(len(CASES)) for side in ("before", "after")]
    return out + [r for c in CASES for r in c.records]


def test_nothing_lost_or_doubled(exports, source):
    good = _good_records()
    bad = [c for c in CASES if c.reason is not None]
    for fmt, e in exports.items():
        t = e.manifest["totals"]
        assert t["exported"] == len(good), fmt
        assert t["bad"] == len(bad) == len(e.dead), fmt
        assert t["records_read"] == len(good) + len(bad) and t["out_of_scope"] == 0, fmt
        pinned = Counter(c.reason for c in bad if c.reason)
        by_reason = Counter(e.manifest["bad_records_by_reason"])
        assert all(by_reason[r] >= n for r, n in pinned.items()) and by_reason.total() == len(bad), fmt
        per_event = Counter()
        for r in good:
            per_event[r["eventName"]] += 1
        got = Counter()
        for f in e.manifest["files"]:
            got[f["event"]] += f["records"]
        assert got == per_event, fmt
        assert sorted(f["name"] for f in e.manifest["files"]) == sorted(e.data_files()), "no stray objects"


@pytest.mark.parametrize("fmt", FORMATS)
def test_neighbors_of_every_case_are_untouched(exports, fmt):
    rows = exports[fmt].rows("Neighbor")
    expected = [neighbor(i, side) for i in range(len(CASES)) for side in ("before", "after")]
    assert len(rows) == len(expected)
    for rec, row in zip(expected, rows, strict=True):  # in ts order, as written
        assert_row(fmt, rec, row, guard=(fmt == "csv"))


BAD = [c for c in CASES if c.reason is not None]


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_bad_record_is_dead_lettered_with_its_reason_and_text(exports, source, case):
    path, first_line = source
    for fmt, e in exports.items():
        letters = [d for d in e.dead if d["source"]["line"] == first_line[case.id]]
        assert len(letters) == 1, (fmt, e.dead)
        d = letters[0]
        if case.reason:
            assert d["reason"] == case.reason, (fmt, d)
        assert d["source"]["file"] == str(path)
        assert d["record"] == case.lines[0].decode("utf-8", "replace"), "the original text, as it was"
        assert d["detail"] and "record_truncated" not in d
    if case.id == "ts in milliseconds":
        assert "milliseconds" in letters[0]["detail"]


GOOD = [c for c in CASES if c.reason is None and not c.skipped]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", GOOD, ids=[c.id for c in GOOD])
def test_good_record_is_exported_exactly(exports, case, fmt):
    e = exports[fmt]
    name = case.records[0]["eventName"]
    rows = e.rows(name)
    assert len(rows) == len(case.records), "each once (duplicates twice)"
    for rec, row in zip(case.records, rows, strict=True):
        assert_row(fmt, rec, row, guard=(fmt == "csv"))
    files = [n for n in e.data_files() if naming.decode_event_name(naming.NAME_RE.match(n)["event"]) == name]
    for n in files:  # a flat, parseable object name within GCS's limit, whatever the event name holds
        assert "/" not in n and len(f"f0/{n}".encode()) <= 1024


def test_blank_lines_are_not_records(exports, source):
    path, first_line = source
    lines = {first_line["blank and whitespace-only lines"] + k for k in range(3)}
    for e in exports.values():
        assert not [d for d in e.dead if d["source"]["line"] in lines]


def test_xml_replaces_forbidden_characters_and_counts_them(exports):
    e = exports["xml"]
    expected = sum(
        xml_forbidden_count(r["eventName"]) + sum(xml_forbidden_count(r.get(g) or {}) for g in GROUPS)
        for r in _good_records()
    )
    assert expected == 10  # four control characters, U+FFFE, U+FFFF, BEL, and BEL in a key of three groups
    assert e.manifest["xml_replaced_chars"] == expected
    for body in e.data_files().values():
        etree.fromstring(body)  # every file parses
    (row,) = e.rows("Ctl")
    props = xml_object(row.find("eventProps"))
    assert props["ctl"] == "a\ufffdb\ufffdc\ufffdd\ufffde" and props["nonchars"] == "\ufffd\ufffd"
    assert props["allowed"] == "tab\tlf\ncr\r", "tab, LF and CR survive (CR as &#13;)"
    for fmt in ("json", "csv"):
        assert exports[fmt].manifest["xml_replaced_chars"] == 0


def test_csv_formula_guard_quotes_text_and_leaves_numbers(exports):
    (row,) = exports["csv"].rows("Formula")
    assert row["eventProps.eq"] == "'=1+2" and row["eventProps.plus"] == "'+SUM(A1)"
    assert row["eventProps.minus"] == "'-2+3" and row["eventProps.at"] == "'@cmd"
    assert row["eventProps.tab"] == "'\tx" and row["eventProps.cr"] == "'\rx"
    assert row["eventProps.neg"] == "-5" and row["eventProps.negf"] == "-2.5", "numbers are not text"
    assert row["eventProps.plain"] == "a=b" and row["profile.name"] == '\'=HYPERLINK("x")'
    (raw,) = exports["json"].rows("Formula")
    assert raw["eventProps"]["eq"] == "=1+2", "only CSV is guarded"


def test_csv_formula_guard_off_leaves_cells_alone():
    from transforms.formats.base import EVENTS, Item, SeriesContext
    from transforms.formats.values import text_encoder

    item = Item(T, None, json.dumps({"ts": int(stamp(T)), "eventProps": {"f": "=1+2", "g": "@x"}}).encode())
    enc = text_encoder("csv", SeriesContext(EVENTS, "-Formula", csv_formula_guard=False), [item])
    header, rows = read_csv(enc.header() + enc.encode(item))
    assert rows == [{"eventName": "-Formula", "ts": stamp(T), "eventProps.f": "=1+2", "eventProps.g": "@x"}]


def test_event_names_map_to_flat_names_and_back(exports):
    names = {naming.decode_event_name(naming.NAME_RE.match(n)["event"]) for n in exports["json"].data_files()}
    for case in GOOD:
        assert case.records[0]["eventName"] in names
    assert "../../etc/passwd" in names and "Level/Up" in names
    objects = exports["json"].objects
    assert all(n.startswith(("_errors/", "_manifests/")) or "/" not in n for n in objects), "nothing nested"


def test_keys_that_are_not_xml_names_become_entries(exports):
    (row,) = exports["xml"].rows("Keys")
    for group in GROUPS:
        el = row.find(group)
        assert xml_object(el) == {xml_clean(k): str(v) for k, v in _KEYS.items()}
        tags = [c.tag for c in el]
        assert "ok_name" in tags or group == "eventProps", "a plain name stays an element"
        assert tags.count("entry") >= 7, "keys that are not XML names are entries"


def test_a_key_named_entry_reads_back_unambiguously(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_bytes(event("Entry", profile={"entry": "x", "key": "k"}, deviceInfo={"entry": "y"}) + b"\n")
    code, out, err = export_to(capsys, str(src), str(tmp_path / "out"), "--format", "xml")
    assert code == 0, err
    (row,) = read_back(str(tmp_path / "out"), "xml").rows("Entry")
    assert xml_object(row.find("profile")) == {"entry": "x", "key": "k"}
    assert xml_object(row.find("deviceInfo")) == {"entry": "y"}


# ---- cases with their own options ------------------------------------------------------------------------------


def _random_text(n: int, seed: int) -> str:
    return base64.b64encode(random.Random(seed).randbytes(n * 3 // 4)).decode()


@pytest.mark.parametrize(
    "fmt, compression", [("json", "none"), ("csv", "gzip"), ("xml", "none"), ("parquet", "snappy")]
)
def test_record_larger_than_max_file_bytes_is_dead_lettered(tmp_path, capsys, fmt, compression):
    recs = [
        {"eventName": "Sized", "ts": T, "eventProps": {"i": 0}},
        {"eventName": "Sized", "ts": T + 1, "eventProps": {"blob": _random_text(20000, 1)}},
        {"eventName": "Sized", "ts": T + 2, "eventProps": {"i": 2}},
    ]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(line(**r) + b"\n" for r in recs))
    code, out, err = export_to(capsys, str(src), str(tmp_path / "out"), "--format", fmt,
                               "--compression", compression, "--max_file_bytes", "8192")  # fmt: skip
    assert code == 0, err
    e = read_back(str(tmp_path / "out"), fmt)
    assert [(d["reason"], d["source"]["line"]) for d in e.dead] == [("larger_than_max_file_bytes", 2)]
    # Its dead-letter file is held to the same limit: the text is cut, and says so; the source line is named.
    original, kept = line(**recs[1]).decode(), e.dead[0]["record"]
    assert e.dead[0]["record_truncated"] is True and original.startswith(kept) and len(kept) > 6000
    assert all(len(b) <= 8192 for b in e.data_files().values())
    rows = e.rows("Sized")
    assert len(rows) == 2
    for rec, row in zip([recs[0], recs[2]], rows, strict=True):
        assert_row(fmt, rec, row)


def test_parquet_widens_a_changing_property_and_every_file_has_one_schema(tmp_path, capsys):
    patterns = [
        {"n": 1, "big": 1, "mix": 1, "flag": True, "obj": {"a": 1}, "lst": [1, 2], "s": "x"},
        {"n": 2.5, "big": 2**60, "mix": "text", "flag": 1, "obj": {"b": "y"}, "lst": ["a"], "s": None},
        {"n": 3, "big": 1.5, "mix": {"k": [1]}, "flag": False, "obj": 5, "lst": [], "s": "z"},
    ]
    recs = []
    for i in range(300):
        props = dict(patterns[i % 3], i=i, late=0.5 if i >= 290 else i)  # doubles only in the last file
        recs.append({"eventName": "Widen", "ts": T + i, "eventProps": props})
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(line(**r) + b"\n" for r in recs))
    code, out, err = export_to(capsys, str(src), str(tmp_path / "out"), "--format", "parquet",
                               "--max_file_bytes", "4000")  # fmt: skip
    assert code == 0, err
    e = read_back(str(tmp_path / "out"), "parquet")
    files = sorted(e.data_files(), key=_index)
    assert len(files) >= 3
    schemas = {str(pq.read_schema(io.BytesIO(e.objects[n]))) for n in files}
    assert len(schemas) == 1, "every file of the series has the same schema"
    props = pq.read_schema(io.BytesIO(e.objects[files[0]])).field("eventProps").type
    types = {props.field(k).name: str(props.field(k).type) for k in range(props.num_fields)}
    assert types == {
        "n": "double",  # integers within 53 bits and doubles
        "late": "double",  # the first file has only integers, the series has doubles
        "big": "string",  # an integer beyond 53 bits mixed with a double
        "mix": "string",
        "flag": "string",  # booleans and integers
        "obj": "string",  # an object and an integer
        "lst": "list<element: string>",  # elements of mixed types
        "s": "string",
        "i": "int64",
    }
    rows = e.rows("Widen")
    assert len(rows) == len(recs)
    expected = [
        {"n": 1.0, "big": "1", "mix": "1", "flag": "true", "obj": '{"a":1}', "lst": ["1", "2"], "s": "x"},
        {
            "n": 2.5,
            "big": str(2**60),
            "mix": "text",
            "flag": "1",
            "obj": '{"b":"y"}',
            "lst": ["a"],
            "s": None,
        },
        {"n": 3.0, "big": "1.5", "mix": '{"k":[1]}', "flag": "false", "obj": "5", "lst": [], "s": "z"},
    ]
    for i, row in enumerate(rows):
        want = dict(expected[i % 3], i=i, late=0.5 if i >= 290 else float(i))
        assert strict_equal(row["eventProps"], want), (i, row["eventProps"])
        assert parquet_matches(recs[i]["eventProps"], row["eventProps"])


@pytest.mark.parametrize("where", ["gcs", "folder"])
def test_object_name_limit_is_exact(tmp_path, capsys, gcs_emulator, where):
    if where == "gcs":
        bucket = f"names-{uuid.uuid4().hex[:12]}"
        gcs_emulator.create_bucket(bucket)
        output, limit, root = f"gs://{bucket}/p", 1024, "p/"
    else:
        output, limit, root = str(tmp_path / "out"), 255, ""
    # The longest object name of a series: its file index may grow to four digits (README).
    fixed = len(f"{root}{REQ}-{RUN_TS}--20261125-9999-{DB}.json".encode())
    budget = limit - fixed  # bytes left for the encoded event name
    fits = "é" * (budget // 2) + "a" * (budget % 2)  # é: two bytes, not encoded
    over = fits + "b"
    longest = f"{root}{REQ}-{RUN_TS}-{naming.encode_event_name(fits)}-20261125-9999-{DB}.json"
    assert len(longest.encode()) == limit and len(fits) <= 512
    src = tmp_path / "in.jsonl"
    src.write_bytes(event(fits) + b"\n" + event(over) + b"\n")
    code, out, err = export_to(capsys, str(src), output)
    assert code == 0, err
    e = read_back(output, "json")
    assert [naming.decode_event_name(naming.NAME_RE.match(n)["event"]) for n in e.data_files()] == [fits]
    assert [(d["reason"], d["source"]["line"]) for d in e.dead] == [("object_name_too_long", 2)]


def test_empty_input_is_done_with_a_manifest_and_no_files(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "blank.jsonl").write_bytes(b"\n  \n\n")
    code, out, err = export_to(capsys, f"{tmp_path}/*.jsonl", str(tmp_path / "out"))
    assert code == 0, err
    e = read_back(str(tmp_path / "out"), "json")
    assert e.manifest["status"] == "Done" and e.manifest["files"] == [] and e.manifest["errors"] == []
    assert e.manifest["totals"]["records_read"] == 0 and list(e.objects) == [
        naming.manifest_name(REQ, RUN_TS)
    ]


def test_input_of_only_bad_records_is_done_with_dead_letters_only(tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_bytes(b"{\nnull\n" + event("") + b"\n")
    code, out, err = export_to(capsys, str(tmp_path / "bad.jsonl"), str(tmp_path / "out"))
    assert code == 0, err
    e = read_back(str(tmp_path / "out"), "json")
    assert e.manifest["files"] == [] and [d["reason"] for d in e.dead] == [
        "unparseable",
        "not_an_object",
        "invalid_event_name",
    ]


@pytest.mark.parametrize(
    "pattern", ["{tmp}/nothing-*.jsonl", "{tmp}/missing.jsonl", "gs://{bucket}/no/*.jsonl"]
)
def test_source_matching_no_file_is_an_invalid_request(tmp_path, capsys, gcs_emulator, pattern):
    bucket = f"src-{uuid.uuid4().hex[:12]}"
    gcs_emulator.create_bucket(bucket)
    source = pattern.format(tmp=tmp_path, bucket=bucket)
    code, out, err = export_to(capsys, source, str(tmp_path / "out"))
    assert code == 2
    assert err.strip() == f"invalid request: --source {source!r} matches no file; check the path and the glob"
    assert out == "" and not (tmp_path / "out").exists(), "nothing read, nothing written"


# ---- reading a row back -----------------------------------------------------------------------------------------


def assert_row(fmt: str, rec: dict, row, guard: bool = False) -> None:
    """The exported row is `rec` as SPEC section 4 writes it in `fmt` (the reader is independent)."""
    name, ts = rec["eventName"], rec["ts"]
    if fmt == "json":
        want = {g: rec[g] for g in ("profile",) if rec.get(g) is not None}
        want["ts"] = int(stamp(ts))
        want.update({g: rec[g] for g in ("deviceInfo", "eventProps") if rec.get(g) is not None})
        assert strict_equal(row, want) and list(row) == list(want), (row, want)
    elif fmt == "csv":
        assert text_matches(name, row["eventName"], guard) and row["ts"] == stamp(ts)
        for col, cell in row.items():
            if col in ("eventName", "ts"):
                continue
            group, _, key = col.partition(".")
            value = (rec.get(group) or {}).get(key)
            assert text_matches(value, cell, guard), (col, value, cell)
        for group in GROUPS:
            for key in rec.get(group) or {}:
                assert f"{group}.{key}" in row, (group, key)
    elif fmt == "xml":
        assert [c.tag for c in row][:2] == ["ts", "eventName"]
        assert row.findtext("ts") == stamp(ts) and row.findtext("eventName") == xml_clean(name)
        for group in GROUPS:
            el = row.find(group)
            if rec.get(group) is None:
                assert el is None
                continue
            got = xml_object(el)
            want = {xml_clean(k): v for k, v in rec[group].items()}
            assert set(got) == set(want), group
            for k, v in want.items():
                assert text_matches(v, got[k], xml=True), (group, k, v, got[k])
    else:
        assert row["eventName"] == name and row["ts"] == datetime.fromtimestamp(ts, UTC)
        for group in GROUPS:
            assert parquet_matches(rec.get(group), row.get(group)), (group, rec.get(group), row.get(group))
