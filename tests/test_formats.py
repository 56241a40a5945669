"""Write-then-read-back tests of the format encoders, each read with an independent reader.

JSON with the json module, CSV with the csv module, XML with both expat (xml.etree) and libxml2 (lxml), Parquet
with pyarrow.parquet from the bytes `pq.write_table` wrote. Expected values are spelled out literally.
"""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lxml import etree

from ctexport.testing.readback import csv_writer_bytes
from transforms.formats.base import EVENTS, PROFILES, Item, SeriesContext
from transforms.formats.csv import CsvEncoder
from transforms.formats.json import JsonEncoder
from transforms.formats.parquet import series_schema, to_table
from transforms.formats.values import text_encoder
from transforms.formats.xml import XmlEncoder


def _epoch(stamp: int) -> int:
    return int(datetime.strptime(str(stamp), "%Y%m%d%H%M%S").replace(tzinfo=UTC).timestamp())


def _utc(stamp: int) -> datetime:
    return datetime.strptime(str(stamp), "%Y%m%d%H%M%S").replace(tzinfo=UTC)


def _events(*records: dict) -> list[Item]:
    return [Item(_epoch(r["ts"]), None, orjson.dumps(r)) for r in records]


def _profiles(*records: dict) -> list[Item]:
    items = []
    for r in records:
        created = _epoch(r["createdAt"]) if "createdAt" in r else None
        items.append(Item(_epoch(r["ts"]), created, orjson.dumps(r)))
    return items


def _file(encoder, items: list[Item]) -> bytes:
    return encoder.header() + b"".join(encoder.encode(i) for i in items) + encoder.footer()


EVENT_CTX = SeriesContext(EVENTS, "Charged")
PROFILE_CTX = SeriesContext(PROFILES, "profiles")

E1 = {
    "profile": {"name": "Zoë 🚀", "email": "z@example.com", "a b": 1, "Phone": "+15551234"},
    "ts": 20240102030405,
    "deviceInfo": {"make": "Apple", "os_version": "17.1"},
    "eventProps": {
        "Amount": 12.5,
        "Items": [{"sku": "A1", "qty": 2}, {"sku": "B2", "qty": 1, "gift": True}],
        "Paid": True,
        "Note": 'said "hi", then\nleft',
        "Empty": {},
        "Nothing": None,
        "Big": 9007199254740993,
        "Tiny": 1e-7,
        "Huge": 1e16,
        "Formula": "=SUM(A1:A2)",
    },
}
E2 = {"ts": 20240102030406, "eventProps": {"Amount": 3, "Note": "plain", "Formula": "-5", "Neg": -5}}
E3 = {
    "profile": {"x:y": "colon", "1st": "digit", "é": "accent", "": "empty key"},
    "ts": 20240102030407,
    "deviceInfo": {},
    "eventProps": {
        "Amount": 0.1,
        "Ctl": "a\x01b\x0bc\ufffed\uffff",
        "CR": "line1\r\nline2",
        "Markup": "<b>&amp;</b>",
        "Small": 0.000025,
    },
}
EVENT_ITEMS = _events(E1, E2, E3)

# Every value of E1..E3 as CSV/XML text: numbers as the JSON line writes them.
EVENT_TEXT = [
    {
        "profile": {"name": "Zoë 🚀", "email": "z@example.com", "a b": "1", "Phone": "+15551234"},
        "deviceInfo": {"make": "Apple", "os_version": "17.1"},
        "eventProps": {
            "Amount": "12.5",
            "Items": '[{"sku":"A1","qty":2},{"sku":"B2","qty":1,"gift":true}]',
            "Paid": "true",
            "Note": 'said "hi", then\nleft',
            "Empty": "{}",
            "Nothing": "",
            "Big": "9007199254740993",
            "Tiny": "1e-7",
            "Huge": "1e+16",
            "Formula": "=SUM(A1:A2)",
        },
    },
    {"eventProps": {"Amount": "3", "Note": "plain", "Formula": "-5", "Neg": "-5"}},
    {
        "profile": {"x:y": "colon", "1st": "digit", "é": "accent", "": "empty key"},
        "deviceInfo": {},
        "eventProps": {
            "Amount": "0.1",
            "Ctl": "a\x01b\x0bc\ufffed\uffff",
            "CR": "line1\r\nline2",
            "Markup": "<b>&amp;</b>",
            "Small": "0.000025",
        },
    },
]

P1 = {
    "objectId": "o1",
    "identity": "id-1",
    "all_identities": ["id-1", "z@example.com"],
    "name": 'Zoë, "Z"',
    "email": "z@example.com",
    "phone": "+15551234567",
    "gender": "F",
    "dob": "1990-01-02",
    "platform": "iOS",
    "createdAt": 20230101000000,
    "ts": 20240101000000,
    "profileProps": {
        "tier": "gold",
        "score": 10,
        "tags": ["a", "b"],
        "prefs": {"mail": True},
        "note": '=HYPERLINK("x")',
        "nil": None,
    },
}
P2 = {"objectId": "o2", "identity": 42, "ts": 20240101000001, "profileProps": {"score": 2.5, "tier": 3}}
P3 = {"objectId": "o3<&>", "ts": 20240101000002}
PROFILE_ITEMS = _profiles(P1, P2, P3)


# JSON ----------------------------------------------------------------------------------------------------


def test_json_events_with_header_read_back():
    enc = JsonEncoder(EVENT_CTX, EVENT_ITEMS)
    data = _file(enc, EVENT_ITEMS)
    lines = data.decode("utf-8").split("\n")
    assert lines[0] == "Charged"
    assert lines[-1] == ""  # every line ends with \n
    assert [json.loads(line) for line in lines[1:-1]] == [E1, E2, E3]
    assert data.count(b"\n") == 4
    assert enc.replaced_chars == 0


def test_json_profiles_header_and_plain_ndjson():
    data = _file(JsonEncoder(PROFILE_CTX, PROFILE_ITEMS), PROFILE_ITEMS).decode()
    assert data.split("\n")[0] == "profiles"
    assert [json.loads(line) for line in data.split("\n")[1:-1]] == [P1, P2, P3]
    plain = SeriesContext(EVENTS, "Charged", json_header=False)
    data = _file(JsonEncoder(plain, EVENT_ITEMS), EVENT_ITEMS).decode()
    assert [json.loads(line) for line in data.splitlines()] == [E1, E2, E3]


def test_json_chunks_are_complete_files():
    enc = JsonEncoder(EVENT_CTX, EVENT_ITEMS)
    first, second = _file(enc, EVENT_ITEMS[:1]), _file(enc, EVENT_ITEMS[1:])
    assert first.decode().splitlines()[0] == second.decode().splitlines()[0] == "Charged"
    assert [json.loads(x) for x in second.decode().splitlines()[1:]] == [E2, E3]


# CSV -----------------------------------------------------------------------------------------------------

EVENT_CSV_HEADER = [
    "eventName",
    "ts",
    "profile.",
    "profile.1st",
    "profile.Phone",
    "profile.a b",
    "profile.email",
    "profile.name",
    "profile.x:y",
    "profile.é",
    "deviceInfo.make",
    "deviceInfo.os_version",
    "eventProps.Amount",
    "eventProps.Big",
    "eventProps.CR",
    "eventProps.Ctl",
    "eventProps.Empty",
    "eventProps.Formula",
    "eventProps.Huge",
    "eventProps.Items",
    "eventProps.Markup",
    "eventProps.Neg",
    "eventProps.Note",
    "eventProps.Nothing",
    "eventProps.Paid",
    "eventProps.Small",
    "eventProps.Tiny",
]


def _read_csv(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def _expected_event_row(index: int, stamp: int) -> list[str]:
    text = EVENT_TEXT[index]
    row = ["Charged", str(stamp)]
    for column in EVENT_CSV_HEADER[2:]:
        group, key = column.split(".", 1)
        row.append(text.get(group, {}).get(key, ""))
    return row


def test_csv_events_read_back():
    enc = CsvEncoder(EVENT_CTX, EVENT_ITEMS)
    data = _file(enc, EVENT_ITEMS)
    rows = _read_csv(data)
    assert rows[0] == EVENT_CSV_HEADER
    assert rows[1] == _expected_event_row(0, 20240102030405)
    assert rows[2] == _expected_event_row(1, 20240102030406)
    assert rows[3] == _expected_event_row(2, 20240102030407)
    assert len(rows) == 4
    # Spot checks of the literal cells that matter most.
    amount = EVENT_CSV_HEADER.index("eventProps.Amount")
    assert [r[amount] for r in rows[1:]] == ["12.5", "3", "0.1"]
    assert rows[1][EVENT_CSV_HEADER.index("eventProps.Tiny")] == "1e-7"
    assert rows[1][EVENT_CSV_HEADER.index("eventProps.Formula")] == "=SUM(A1:A2)"  # no guard by default
    assert rows[3][EVENT_CSV_HEADER.index("eventProps.CR")] == "line1\r\nline2"
    assert enc.replaced_chars == 0


def test_csv_raw_bytes_rfc4180():
    data = _file(CsvEncoder(EVENT_CTX, EVENT_ITEMS), EVENT_ITEMS)
    assert data.startswith(b"eventName,ts,profile.,profile.1st,")
    assert data.endswith(b"\r\n")
    assert b'"said ""hi"", then\nleft"' in data  # quotes doubled, the LF inside a quoted cell
    assert b'"line1\r\nline2"' in data
    assert b'"[{""sku"":""A1"",""qty"":2},{""sku"":""B2"",""qty"":1,""gift"":true}]"' in data
    # Outside quoted cells every line ends with CRLF: 4 rows, 2 embedded line ends.
    assert data.count(b"\r\n") == 5
    assert data.count(b"\n") == 6


def test_csv_profiles_read_back():
    enc = CsvEncoder(PROFILE_CTX, PROFILE_ITEMS)
    rows = _read_csv(_file(enc, PROFILE_ITEMS))
    assert rows[0] == [
        "objectId",
        "identity",
        "all_identities",
        "name",
        "email",
        "phone",
        "gender",
        "dob",
        "platform",
        "createdAt",
        "ts",
        "profileProps.nil",
        "profileProps.note",
        "profileProps.prefs",
        "profileProps.score",
        "profileProps.tags",
        "profileProps.tier",
    ]
    assert rows[1] == [
        "o1",
        "id-1",
        '["id-1","z@example.com"]',
        'Zoë, "Z"',
        "z@example.com",
        "+15551234567",
        "F",
        "1990-01-02",
        "iOS",
        "20230101000000",
        "20240101000000",
        "",
        '=HYPERLINK("x")',
        '{"mail":true}',
        "10",
        '["a","b"]',
        "gold",
    ]
    assert rows[2] == [
        "o2",
        "42",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "20240101000001",
        "",
        "",
        "",
        "2.5",
        "",
        "3",
    ]
    assert rows[3] == ["o3<&>", "", "", "", "", "", "", "", "", "", "20240101000002", "", "", "", "", "", ""]
    assert len(rows) == 4


def test_csv_formula_guard():
    records = [
        {
            "ts": 20240101000000,
            "eventProps": {
                "eq": "=1+1",
                "plus": "+1",
                "minus": "-1",
                "at": "@cmd",
                "tab": "\tx",
                "cr": "\rx",
                "neg": -7,
                "float": -0.5,
                "safe": "a=b",
                "list": ["=x"],
                "empty": "",
            },
        }
    ]
    items = _events(*records)
    ctx = SeriesContext(EVENTS, "=evil", csv_formula_guard=True)
    rows = _read_csv(_file(CsvEncoder(ctx, items), items))
    header = rows[0]
    assert header[:2] == ["eventName", "ts"]
    cells = dict(zip(header, rows[1], strict=True))
    assert cells == {
        "eventName": "'=evil",
        "ts": "20240101000000",
        "eventProps.at": "'@cmd",
        "eventProps.cr": "'\rx",
        "eventProps.empty": "",
        "eventProps.eq": "'=1+1",
        "eventProps.float": "-0.5",
        "eventProps.list": '["=x"]',
        "eventProps.minus": "'-1",
        "eventProps.neg": "-7",
        "eventProps.plus": "'+1",
        "eventProps.safe": "a=b",
        "eventProps.tab": "'\tx",
    }
    # Without the guard the same text is written as it is.
    plain = SeriesContext(EVENTS, "=evil")
    rows = _read_csv(_file(CsvEncoder(plain, items), items))
    cells = dict(zip(rows[0], rows[1], strict=True))
    assert cells["eventName"] == "=evil"
    assert cells["eventProps.eq"] == "=1+1"
    assert cells["eventProps.minus"] == "-1"


def test_csv_formula_guard_profiles():
    ctx = SeriesContext(PROFILES, "profiles", csv_formula_guard=True)
    rows = _read_csv(_file(CsvEncoder(ctx, PROFILE_ITEMS), PROFILE_ITEMS))
    cells = dict(zip(rows[0], rows[1], strict=True))
    assert cells["phone"] == "'+15551234567"
    assert cells["profileProps.note"] == '\'=HYPERLINK("x")'
    assert cells["createdAt"] == "20230101000000"


def test_csv_chunks_share_the_series_header():
    enc = CsvEncoder(EVENT_CTX, EVENT_ITEMS)
    first = _read_csv(_file(enc, EVENT_ITEMS[1:2]))  # E2 alone: no profile, no deviceInfo
    second = _read_csv(_file(enc, EVENT_ITEMS[2:]))
    assert first[0] == second[0] == EVENT_CSV_HEADER
    assert first[1:] == [_expected_event_row(1, 20240102030406)]
    assert second[1:] == [_expected_event_row(2, 20240102030407)]


# XML -----------------------------------------------------------------------------------------------------


def _parse_both(data: bytes) -> list:
    """Parses with expat and with libxml2; both must give the same records."""
    expat_root = ET.fromstring(data)
    lxml_root = etree.fromstring(data)
    records = [_xml_record(el) for el in expat_root]
    assert records == [_xml_record(el) for el in lxml_root]
    return [expat_root.tag, records]


def _xml_record(el) -> list:
    """A record as [(child tag, text or [(key, text), …])], entries and elements told apart."""
    out = []
    for child in el:
        if len(child) == 0 and child.tag not in ("profile", "deviceInfo", "eventProps", "profileProps"):
            out.append((child.tag, child.text or ""))
            continue
        pairs = []
        for sub in child:
            if sub.tag == "entry":
                key, value = list(sub)
                assert (key.tag, value.tag) == ("key", "value")
                pairs.append(("entry", key.text or "", value.text or ""))
            else:
                assert len(sub) == 0
                pairs.append(("element", sub.tag, sub.text or ""))
        out.append((child.tag, pairs))
    return out


def test_xml_events_read_back():
    enc = XmlEncoder(EVENT_CTX, EVENT_ITEMS)
    data = _file(enc, EVENT_ITEMS)
    assert data.startswith(
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Events>\n<Event><ts>20240102030405</ts>'
    )
    assert data.endswith(b"</Event>\n</Events>\n")
    assert data.count(b"\n") == 6  # declaration, root, one line per record, end of root
    root, records = _parse_both(data)
    assert root == "Events"
    e1, e2, e3 = EVENT_TEXT
    assert records[0] == [
        ("ts", "20240102030405"),
        ("eventName", "Charged"),
        (
            "profile",
            [
                ("element", "name", "Zoë 🚀"),
                ("element", "email", "z@example.com"),
                ("entry", "a b", "1"),
                ("element", "Phone", "+15551234"),
            ],
        ),
        ("deviceInfo", [("element", "make", "Apple"), ("element", "os_version", "17.1")]),
        ("eventProps", [("entry", k, v) for k, v in e1["eventProps"].items()]),
    ]
    assert records[1] == [
        ("ts", "20240102030406"),
        ("eventName", "Charged"),
        ("eventProps", [("entry", k, v) for k, v in e2["eventProps"].items()]),
    ]
    props3 = dict(e3["eventProps"], Ctl="a\ufffdb\ufffdc\ufffdd\ufffd")
    assert records[2] == [
        ("ts", "20240102030407"),
        ("eventName", "Charged"),
        (
            "profile",
            [
                ("entry", "x:y", "colon"),
                ("entry", "1st", "digit"),
                ("entry", "é", "accent"),
                ("entry", "", "empty key"),
            ],
        ),
        ("deviceInfo", []),
        ("eventProps", [("entry", k, v) for k, v in props3.items()]),
    ]
    assert enc.replaced_chars == 4
    assert b"line1&#13;&#10;line2" in data  # CR survives parsing as CR
    assert b"&lt;b&gt;&amp;amp;&lt;/b&gt;" in data


def test_xml_profiles_read_back():
    enc = XmlEncoder(PROFILE_CTX, PROFILE_ITEMS)
    data = _file(enc, PROFILE_ITEMS)
    assert data.startswith(
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Profiles>\n<Profile><objectId>o1</objectId>'
    )
    assert data.endswith(b"</Profile>\n</Profiles>\n")
    root, records = _parse_both(data)
    assert root == "Profiles"
    assert records[0] == [
        ("objectId", "o1"),
        ("identity", "id-1"),
        ("all_identities", '["id-1","z@example.com"]'),
        ("name", 'Zoë, "Z"'),
        ("email", "z@example.com"),
        ("phone", "+15551234567"),
        ("gender", "F"),
        ("dob", "1990-01-02"),
        ("platform", "iOS"),
        ("createdAt", "20230101000000"),
        ("ts", "20240101000000"),
        (
            "profileProps",
            [
                ("entry", "tier", "gold"),
                ("entry", "score", "10"),
                ("entry", "tags", '["a","b"]'),
                ("entry", "prefs", '{"mail":true}'),
                ("entry", "note", '=HYPERLINK("x")'),
                ("entry", "nil", ""),
            ],
        ),
    ]
    assert records[1] == [
        ("objectId", "o2"),
        ("identity", "42"),
        ("ts", "20240101000001"),
        ("profileProps", [("entry", "score", "2.5"), ("entry", "tier", "3")]),
    ]
    assert records[2] == [("objectId", "o3<&>"), ("ts", "20240101000002")]
    assert enc.replaced_chars == 0


@pytest.mark.parametrize(
    ("raw", "parsed", "replaced"),
    [
        ("a&b", "a&b", 0),
        ("a<b", "a<b", 0),
        ("a>b", "a>b", 0),
        ("a\rb", "a\rb", 0),
        ("a\r\nb", "a\r\nb", 0),
        ("a\tb\nc", "a\tb\nc", 0),
        ("a\x00b", "a\ufffdb", 1),
        ("a\x08b\x0c", "a\ufffdb\ufffd", 2),
        ("\x1f", "\ufffd", 1),
        ("a\ufffeb\uffff", "a\ufffdb\ufffd", 2),
        ("\x7f\x85\ud7ff\ue000\ufffd\U0001f600", "\x7f\x85\ud7ff\ue000\ufffd\U0001f600", 0),
        ('q"uote\\back', 'q"uote\\back', 0),
    ],
)
def test_xml_text_escapes_and_replacements(raw, parsed, replaced):
    """Each character class alone, in a value, a key and a profile element, so no fast path can skip it."""
    items = _events({"ts": 20240101000000, "profile": {"k": raw}, "eventProps": {raw: raw}})
    enc = XmlEncoder(EVENT_CTX, items)
    _, records = _parse_both(_file(enc, items))
    assert records[0][2:] == [
        ("profile", [("element", "k", parsed)]),
        ("eventProps", [("entry", parsed, parsed)]),
    ]
    assert enc.replaced_chars == 3 * replaced


def test_xml_event_name_is_escaped_and_counted_per_record():
    items = _events({"ts": 20240101000000}, {"ts": 20240101000001})
    enc = XmlEncoder(SeriesContext(EVENTS, "A&B <x>\ufffe"), items)
    data = _file(enc, items)
    _, records = _parse_both(data)
    assert [r[1] for r in records] == [("eventName", "A&B <x>\ufffd")] * 2
    assert enc.replaced_chars == 2
    assert records[0] == [("ts", "20240101000000"), ("eventName", "A&B <x>\ufffd")]


def test_xml_element_names():
    keys = [
        "ok",
        "_under",
        "with-dash.dot9",
        "A1",
        "9lives",
        "-x",
        ".x",
        "has space",
        "ns:key",
        "xmlish",
        "é",
        "⁰x",
    ]
    items = _events({"ts": 20240101000000, "deviceInfo": {k: "v" for k in keys}})
    _, records = _parse_both(_file(XmlEncoder(EVENT_CTX, items), items))
    assert records[0][2] == (
        "deviceInfo",
        [
            ("element", "ok", "v"),
            ("element", "_under", "v"),
            ("element", "with-dash.dot9", "v"),
            ("element", "A1", "v"),
            ("entry", "9lives", "v"),
            ("entry", "-x", "v"),
            ("entry", ".x", "v"),
            ("entry", "has space", "v"),
            ("entry", "ns:key", "v"),
            ("element", "xmlish", "v"),
            ("entry", "é", "v"),
            ("entry", "⁰x", "v"),
        ],
    )


def test_xml_plain_events_give_what_the_general_path_gives():
    # Events whose text needs no escaping take a fast path that caches each key's markup; the general path
    # escapes value by value. A line holding "&" forces the general path; the same shape twice hits the cache.
    records = [
        {"profile": {"name": "A", "n": 1}, "ts": 20240101000000, "eventProps": {"p%s": 1.5, "q": None}},
        {"profile": {"name": "B", "n": 2}, "ts": 20240101000001, "eventProps": {"p%s": [1, "x"], "q": True}},
        {"profile": {"n": 3, "name": "C"}, "ts": 20240101000002, "eventProps": {"p%s": {"a": 1}, "q": "%d"}},
        {"ts": 20240101000003, "deviceInfo": {"os": "iOS", "9x": 9}, "eventProps": {}},
        {"ts": 20240101000004, "deviceInfo": {"os": "Android", "9x": -0.0}},
        {"profile": {}, "ts": 20240101000005},
        {"profile": {"name": "A", "n": 1}, "ts": 20240101000006, "eventProps": {"p%s": 100, "q": "%%"}},
    ]
    for name in ("Charged", "50% Off %s"):
        plain = XmlEncoder(SeriesContext(EVENTS, name), ())
        general = XmlEncoder(SeriesContext(EVENTS, name), ())
        for r in records:
            line = orjson.dumps(r)
            data = orjson.loads(line)
            assert plain.encode_data(data, line) == general.encode_data(data, line + b"&")
        assert plain.replaced_chars == general.replaced_chars == 0
    encoded = plain.encode_data(records[1], orjson.dumps(records[1]))
    assert encoded == (
        b"<Event><ts>20240101000001</ts><eventName>50% Off %s</eventName><profile><name>B</name><n>2</n>"
        b'</profile><eventProps><entry><key>p%s</key><value>[1,"x"]</value></entry><entry><key>q</key>'
        b"<value>true</value></entry></eventProps></Event>\n"
    )


def test_xml_chunks_are_complete_files():
    enc = XmlEncoder(EVENT_CTX, EVENT_ITEMS)
    first, second = _file(enc, EVENT_ITEMS[:2]), _file(enc, EVENT_ITEMS[2:])
    assert [len(_parse_both(first)[1]), len(_parse_both(second)[1])] == [2, 1]
    assert _file(enc, []) == b'<?xml version="1.0" encoding="UTF-8"?>\n<Events>\n</Events>\n'


# Text encoder factory --------------------------------------------------------------------------------------


def test_text_encoder_picks_the_format():
    for fmt, cls in (("json", JsonEncoder), ("csv", CsvEncoder), ("xml", XmlEncoder)):
        enc = text_encoder(fmt, EVENT_CTX, EVENT_ITEMS)
        assert type(enc) is cls
        assert enc.ext == fmt
    with pytest.raises(ValueError, match="parquet"):
        text_encoder("parquet", EVENT_CTX, EVENT_ITEMS)


# Parquet -------------------------------------------------------------------------------------------------


def _roundtrip(table: pa.Table) -> pa.Table:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return pq.read_table(io.BytesIO(buf.getvalue()))


def test_parquet_events_read_back():
    schema = series_schema(EVENT_CTX, EVENT_ITEMS)
    assert schema == pa.schema(
        [
            ("ts", pa.timestamp("us", tz="UTC")),
            ("eventName", pa.string()),
            (
                "profile",
                pa.struct(
                    [
                        ("", pa.string()),
                        ("1st", pa.string()),
                        ("Phone", pa.string()),
                        ("a b", pa.int64()),
                        ("email", pa.string()),
                        ("name", pa.string()),
                        ("x:y", pa.string()),
                        ("é", pa.string()),
                    ]
                ),
            ),
            ("deviceInfo", pa.struct([("make", pa.string()), ("os_version", pa.string())])),
            (
                "eventProps",
                pa.struct(
                    [
                        ("Amount", pa.float64()),
                        ("Big", pa.int64()),
                        ("CR", pa.string()),
                        ("Ctl", pa.string()),
                        ("Empty", pa.string()),
                        ("Formula", pa.string()),
                        ("Huge", pa.float64()),
                        (
                            "Items",
                            pa.list_(
                                pa.struct([("gift", pa.bool_()), ("qty", pa.int64()), ("sku", pa.string())])
                            ),
                        ),
                        ("Markup", pa.string()),
                        ("Neg", pa.int64()),
                        ("Note", pa.string()),
                        ("Nothing", pa.string()),
                        ("Paid", pa.bool_()),
                        ("Small", pa.float64()),
                        ("Tiny", pa.float64()),
                    ]
                ),
            ),
        ]
    )
    back = _roundtrip(to_table(EVENT_CTX, schema, EVENT_ITEMS))
    assert back.schema.equals(schema)
    props = dict.fromkeys(schema.field("eventProps").type.names)
    assert back.to_pylist() == [
        {
            "ts": _utc(20240102030405),
            "eventName": "Charged",
            "profile": {
                "": None,
                "1st": None,
                "Phone": "+15551234",
                "a b": 1,
                "email": "z@example.com",
                "name": "Zoë 🚀",
                "x:y": None,
                "é": None,
            },
            "deviceInfo": {"make": "Apple", "os_version": "17.1"},
            "eventProps": dict(
                props,
                Amount=12.5,
                Big=9007199254740993,
                Formula="=SUM(A1:A2)",
                Huge=1e16,
                Items=[{"gift": None, "qty": 2, "sku": "A1"}, {"gift": True, "qty": 1, "sku": "B2"}],
                Note='said "hi", then\nleft',
                Paid=True,
                Tiny=1e-7,
            ),
        },
        {
            "ts": _utc(20240102030406),
            "eventName": "Charged",
            "profile": None,
            "deviceInfo": None,
            "eventProps": dict(props, Amount=3.0, Formula="-5", Neg=-5, Note="plain"),
        },
        {
            "ts": _utc(20240102030407),
            "eventName": "Charged",
            "profile": {
                "": "empty key",
                "1st": "digit",
                "Phone": None,
                "a b": None,
                "email": None,
                "name": None,
                "x:y": "colon",
                "é": "accent",
            },
            "deviceInfo": None,  # an empty object is null
            "eventProps": dict(
                props,
                Amount=0.1,
                CR="line1\r\nline2",
                Ctl="a\x01b\x0bc\ufffed\uffff",
                Markup="<b>&amp;</b>",
                Small=0.000025,
            ),
        },
    ]


def test_parquet_profiles_read_back():
    schema = series_schema(PROFILE_CTX, PROFILE_ITEMS)
    ts = pa.timestamp("us", tz="UTC")
    assert schema == pa.schema(
        [
            ("objectId", pa.string()),
            ("identity", pa.string()),  # "id-1" and 42
            ("all_identities", pa.list_(pa.string())),
            ("name", pa.string()),
            ("email", pa.string()),
            ("phone", pa.string()),
            ("gender", pa.string()),
            ("dob", pa.string()),
            ("platform", pa.string()),
            ("createdAt", ts),
            ("ts", ts),
            (
                "profileProps",
                pa.struct(
                    [
                        ("nil", pa.string()),
                        ("note", pa.string()),
                        ("prefs", pa.struct([("mail", pa.bool_())])),
                        ("score", pa.float64()),
                        ("tags", pa.list_(pa.string())),
                        ("tier", pa.string()),
                    ]
                ),
            ),
        ]
    )
    rows = _roundtrip(to_table(PROFILE_CTX, schema, PROFILE_ITEMS)).to_pylist()
    blank = dict.fromkeys(["all_identities", "name", "email", "phone", "gender", "dob", "platform"])
    assert rows == [
        {
            "objectId": "o1",
            "identity": "id-1",
            "all_identities": ["id-1", "z@example.com"],
            "name": 'Zoë, "Z"',
            "email": "z@example.com",
            "phone": "+15551234567",
            "gender": "F",
            "dob": "1990-01-02",
            "platform": "iOS",
            "createdAt": _utc(20230101000000),
            "ts": _utc(20240101000000),
            "profileProps": {
                "nil": None,
                "note": '=HYPERLINK("x")',
                "prefs": {"mail": True},
                "score": 10.0,
                "tags": ["a", "b"],
                "tier": "gold",
            },
        },
        {
            "objectId": "o2",
            "identity": "42",
            **blank,
            "createdAt": None,
            "ts": _utc(20240101000001),
            "profileProps": {
                "nil": None,
                "note": None,
                "prefs": None,
                "score": 2.5,
                "tags": None,
                "tier": "3",
            },
        },
        {
            "objectId": "o3<&>",
            "identity": None,
            **blank,
            "createdAt": None,
            "ts": _utc(20240101000002),
            "profileProps": None,
        },
    ]


def _widened(*values) -> tuple[pa.DataType, list]:
    """Type and read-back values of eventProps.v over a series holding `values` in that order."""
    items = _events(*({"ts": 20240101000000 + i, "eventProps": {"v": v}} for i, v in enumerate(values)))
    schema = series_schema(EVENT_CTX, items)
    typ = schema.field("eventProps").type.field("v").type
    rows = _roundtrip(to_table(EVENT_CTX, schema, items)).to_pylist()
    return typ, [r["eventProps"]["v"] if r["eventProps"] else "<null struct>" for r in rows]


@pytest.mark.parametrize(
    ("values", "typ", "back"),
    [
        ([1, 2.5], pa.float64(), [1.0, 2.5]),
        ([2.5, 1], pa.float64(), [2.5, 1.0]),
        ([2**53, -(2**53), 0.5], pa.float64(), [9007199254740992.0, -9007199254740992.0, 0.5]),
        ([2**53 + 1, 0.5], pa.string(), ["9007199254740993", "0.5"]),
        ([0.5, -(2**53) - 1], pa.string(), ["0.5", "-9007199254740993"]),
        ([1, 0.5, 2**60], pa.string(), ["1", "0.5", "1152921504606846976"]),
        ([1, 2**60, 0.5], pa.string(), ["1", "1152921504606846976", "0.5"]),
        ([2**63 - 1, -(2**63), 1], pa.int64(), [2**63 - 1, -(2**63), 1]),
        (["a", 1], pa.string(), ["a", "1"]),
        ([1, "a"], pa.string(), ["1", "a"]),
        ([True, 1], pa.string(), ["true", "1"]),
        ([False, "no"], pa.string(), ["false", "no"]),
        ([{"a": 1}, "x"], pa.string(), ['{"a":1}', "x"]),
        ([[1, 2], 3], pa.string(), ["[1,2]", "3"]),
        ([[1], {"a": [1]}], pa.string(), ["[1]", '{"a":[1]}']),
        ([1.5, None, "é"], pa.string(), ["1.5", None, "é"]),
        ([None, None], pa.string(), [None, None]),
        ([{}, None], pa.string(), [None, None]),
        ([[], None], pa.list_(pa.string()), [[], None]),
        ([[1], [2.5], []], pa.list_(pa.float64()), [[1.0], [2.5], []]),
        ([[1, None], ["x"]], pa.list_(pa.string()), [["1", None], ["x"]]),
        ([[{"k": 1}], [2]], pa.list_(pa.string()), [['{"k":1}'], ["2"]]),
        ([{"x": "s"}, {}], pa.struct([("x", pa.string())]), [{"x": "s"}, None]),
        ([1, {}], pa.int64(), [1, None]),
        ([{}, True], pa.bool_(), [None, True]),
        ([[1], {}], pa.list_(pa.int64()), [[1], None]),
        ([[1], [{}, 2]], pa.list_(pa.int64()), [[1], [None, 2]]),
        ([[[1]], [{}]], pa.list_(pa.list_(pa.int64())), [[[1]], [None]]),
        ([[{"k": 1}], {}, [{}]], pa.list_(pa.struct([("k", pa.int64())])), [[{"k": 1}], None, [None]]),
    ],
)
def test_parquet_widening(values, typ, back):
    assert _widened(*values) == (typ, back)


def test_parquet_struct_and_list_merge():
    typ, back = _widened({"a": 1}, {"b": "x"}, {"a": 2.5, "c": {"d": True}}, {"c": {}})
    assert typ == pa.struct(
        [("a", pa.float64()), ("b", pa.string()), ("c", pa.struct([("d", pa.bool_())]))],
    )
    assert back == [
        {"a": 1.0, "b": None, "c": None},
        {"a": None, "b": "x", "c": None},
        {"a": 2.5, "b": None, "c": {"d": True}},
        {"a": None, "b": None, "c": None},
    ]
    typ, back = _widened([{"a": 1}, {}], [{"b": [1]}], [{"a": "x", "b": [2.5]}])
    assert typ == pa.list_(pa.struct([("a", pa.string()), ("b", pa.list_(pa.float64()))]))
    assert back == [
        [{"a": "1", "b": None}, None],
        [{"a": None, "b": [1.0]}],
        [{"a": "x", "b": [2.5]}],
    ]


def test_parquet_widened_string_keeps_nested_empty_objects_as_text():
    typ, back = _widened({"a": {}, "b": [{}]}, "s")
    assert (typ, back) == (pa.string(), ['{"a":{},"b":[{}]}', "s"])


def test_parquet_schema_ignores_record_order():
    records = [
        {"ts": 20240101000000, "eventProps": {"n": 1, "m": {"x": 1}, "l": [1]}},
        {"ts": 20240101000001, "eventProps": {"n": 0.5, "m": {"y": "s"}, "l": ["a"]}},
        {"ts": 20240101000002, "eventProps": {"n": 2**60, "m": None, "l": []}},
    ]
    schema = series_schema(EVENT_CTX, _events(*records))
    assert schema == series_schema(EVENT_CTX, _events(*reversed(records)))
    assert schema.field("eventProps").type == pa.struct(
        [
            ("l", pa.list_(pa.string())),
            ("m", pa.struct([("x", pa.int64()), ("y", pa.string())])),
            ("n", pa.string()),
        ]
    )


def test_parquet_chunks_share_the_series_schema():
    records = [
        {"ts": 20240101000000, "profile": {"name": "a"}, "eventProps": {"v": 1, "w": [1]}},
        {"ts": 20240101000001, "eventProps": {"v": 2}},
        {"ts": 20240101000002, "deviceInfo": {"os": "x"}, "eventProps": {"v": "three", "w": [{"k": 1}]}},
        {"ts": 20240101000003, "eventProps": {"v": 4.5, "z": True}},
    ]
    items = _events(*records)
    schema = series_schema(EVENT_CTX, items)
    chunks = [items[:2], items[2:3], items[3:]]
    tables = [_roundtrip(to_table(EVENT_CTX, schema, chunk)) for chunk in chunks]
    for table in tables:
        assert table.schema.equals(schema)
    rows = [row for table in tables for row in table.to_pylist()]
    assert [r["eventProps"] for r in rows] == [
        {"v": "1", "w": ["1"], "z": None},
        {"v": "2", "w": None, "z": None},
        {"v": "three", "w": ['{"k":1}'], "z": None},
        {"v": "4.5", "w": None, "z": True},
    ]
    assert [r["profile"] for r in rows] == [{"name": "a"}, None, None, None]
    assert [r["deviceInfo"] for r in rows] == [None, None, {"os": "x"}, None]
    assert pa.concat_tables(tables).equals(_roundtrip(to_table(EVENT_CTX, schema, items)))


def test_parquet_objects_without_keys_have_no_column():
    items = _events({"ts": 20240101000000, "profile": {}}, {"ts": 20240101000001, "eventProps": {}})
    schema = series_schema(EVENT_CTX, items)
    assert schema.names == ["ts", "eventName"]
    assert _roundtrip(to_table(EVENT_CTX, schema, items)).to_pylist() == [
        {"ts": _utc(20240101000000), "eventName": "Charged"},
        {"ts": _utc(20240101000001), "eventName": "Charged"},
    ]
    items = _profiles({"objectId": "o", "ts": 20240101000000, "profileProps": {}})
    schema = series_schema(PROFILE_CTX, items)
    assert "profileProps" not in schema.names
    assert schema.field("name").type == pa.string()
    assert _roundtrip(to_table(PROFILE_CTX, schema, items)).column("objectId").to_pylist() == ["o"]


def test_parquet_empty_series():
    schema = series_schema(EVENT_CTX, [])
    assert schema.names == ["ts", "eventName"]
    assert to_table(EVENT_CTX, schema, []).num_rows == 0


def _reference(value, typ: pa.DataType):
    """What a value of `typ` reads back as, by the widening rules, written plainly (slow, independent)."""
    if value is None or value == {}:  # an empty object is null
        return None
    if pa.types.is_string(typ):
        return (
            value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        )
    if pa.types.is_struct(typ):
        return {f.name: _reference(value.get(f.name), f.type) for f in typ}
    if pa.types.is_list(typ):
        return [_reference(x, typ.value_type) for x in value]
    if pa.types.is_floating(typ):
        return float(value)
    return value


def _random_value(rng, depth: int = 0):
    kind = rng.choice(
        ["str", "int", "float", "bool", "null", "list", "dict", "dict", "big"][: 9 if depth < 3 else 5]
    )
    if kind == "str":
        return rng.choice(["", "a", "é", "x,y", "=f"])
    if kind == "int":
        return rng.randint(-5, 5)
    if kind == "float":
        return rng.choice([0.5, -2.25, 1e300])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "big":
        return rng.choice([2**60, -(2**62)])
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice("abc"): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


@pytest.mark.parametrize("seed", [*range(40), 1030, 1062])
def test_parquet_random_series_match_the_plain_rules(seed):
    """Random nested series, written in two chunks, read back as the plain rules say (ints as small floats)."""
    import random

    rng = random.Random(seed)
    records = [
        {"ts": 20240101000000 + i, "eventProps": {k: _random_value(rng) for k in rng.sample("pqrs", 3)}}
        for i in range(rng.randint(1, 12))
    ]
    items = _events(*records)
    schema = series_schema(EVENT_CTX, items)
    props = schema.field("eventProps").type if "eventProps" in schema.names else None
    cut = len(items) // 2
    rows = [
        r
        for chunk in (items[:cut], items[cut:])
        for r in _roundtrip(to_table(EVENT_CTX, schema, chunk)).to_pylist()
    ]
    for record, row in zip(records, rows, strict=True):
        expected = None if props is None else _reference(record["eventProps"], props)
        assert row.get("eventProps") == expected


_POOL = "ab é🚀,\"'\n\r\t&<>;=+-@\\/\x00\x01\x0b\x1f\x7f\ufffe\uffff\ufffd\u2028:."


@pytest.mark.parametrize("seed", range(20))
def test_text_formats_random_strings_read_back(seed):
    """Random keys and values from a pool of awkward characters, read back by csv, expat and lxml."""
    import random

    rng = random.Random(seed)

    def text() -> str:
        return "".join(rng.choice(_POOL) for _ in range(rng.randint(0, 6)))

    records = [
        {
            "profile": {text(): text() for _ in range(3)},
            "ts": 20240101000000 + i,
            "eventProps": {text(): text() for _ in range(3)},
        }
        for i in range(5)
    ]
    items = _events(*records)

    def clean(s: str) -> str:
        return "".join("\ufffd" if c in "\x00\x01\x0b\x1f\ufffe\uffff" else c for c in s)

    enc = XmlEncoder(EVENT_CTX, items)
    _, parsed = _parse_both(_file(enc, items))
    forbidden = 0
    for record, got in zip(records, parsed, strict=True):
        assert got[2][0] == "profile"
        assert [(key, value) for _, key, value in got[2][1]] == [
            (clean(k), clean(v)) for k, v in record["profile"].items()
        ]
        assert got[3] == (
            "eventProps",
            [("entry", clean(k), clean(v)) for k, v in record["eventProps"].items()],
        )
        for obj in (record["profile"], record["eventProps"]):
            forbidden += sum(clean(s).count("\ufffd") - s.count("\ufffd") for kv in obj.items() for s in kv)
    assert enc.replaced_chars == forbidden

    rows = _read_csv(_file(CsvEncoder(EVENT_CTX, items), items))
    for record, row in zip(records, rows[1:], strict=True):
        cells = dict(zip(rows[0], row, strict=True))
        for group in ("profile", "eventProps"):
            for key, value in record[group].items():
                assert cells[f"{group}.{key}"] == value


@pytest.mark.parametrize(
    "text",
    [
        "plain ascii, no markup",
        "a & b",
        "1 < 2",
        "2 > 1",
        "tab\tand\nnewline",  # JSON escapes them: a backslash in the line
        'quote " inside',
        "fullwidth Ａ and ￼ and ｡",  # U+FF21, U+FFFC, U+FF61: UTF-8 starting EF but not forbidden
        "noncharacter \ufffe here",
        "noncharacter \uffff here",
        "\ufffe",
        "private use \uf8ff and \ufffd replacement",
        "",
    ],
)
def test_xml_escape_filter_agrees_with_searching_for_each_sequence(text):
    from transforms.formats.xml import _may_need_escapes

    sequences = (b"\\", b"&", b"<", b">", b"\xef\xbf\xbe", b"\xef\xbf\xbf")
    for data in (orjson.dumps({"ts": 1, "eventProps": {"k": text}}), text.encode()):
        assert _may_need_escapes(data) == any(s in data for s in sequences)


@pytest.mark.parametrize("name", ["Charged", "Size, Colour", 'The "Best"'])
@pytest.mark.parametrize(
    "value", ["plain", "a,b", 'say "hi"', "a\nb", "a\rb", "", "[1,2]", '"', ",", None, [], {}]
)
def test_csv_row_is_what_csv_writer_writes(name, value):
    """Each kind of cell that needs quotes, or not, beside cells of every other kind: the row the encoder joins
    itself is the one csv.writer writes."""
    props = {
        "v": value,
        "list": [1, 2],
        "strs": ["a"],
        "obj": {"a": "b"},
        "n": None,
        "f": 1.5,
        "t": True,
        "i": 3,
    }
    items = _events({"profile": {"p": "x"}, "ts": 20240102030405, "eventProps": props})
    keys = sorted(props)
    rows = [
        ["eventName", "ts", "profile.p"] + [f"eventProps.{k}" for k in keys],
        [name, 20240102030405, "x"] + [props[k] for k in keys],
    ]
    assert _file(CsvEncoder(SeriesContext(EVENTS, name), items), items) == csv_writer_bytes(rows)
