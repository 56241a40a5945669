"""Independent readers and checks for exported files, for tests: they use json, csv, lxml and pyarrow, never the
exporter's own encoders, and state what SPEC section 4 promises about each format in a few lines.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
from typing import Any

import orjson

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# Characters XML 1.0 does not allow in a document (its Char production), which the export replaces by U+FFFD.
XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_NONCHARS = re.compile("[\ufffe\uffff]")


def strict_equal(a: Any, b: Any) -> bool:
    """Equal values of equal JSON types: 1, 1.0 and True differ here (Python's == says they are equal)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(strict_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def unzip(data: bytes, name: str) -> bytes:
    return gzip.decompress(data) if name.endswith(".gz") else data


# ---- JSON ---------------------------------------------------------------------------------------------------


def read_json(data: bytes, header: bool = True) -> tuple[str | None, list[dict]]:
    """(first line, records) of a JSON export file; every line ends with LF."""
    text = data.decode("utf-8")
    assert text.endswith("\n") and "\r\n" not in text.replace("\\r\\n", "")
    lines = text.split("\n")[:-1]
    first = lines.pop(0) if header else None
    return first, [json.loads(line) for line in lines]


# ---- CSV ----------------------------------------------------------------------------------------------------


def read_csv(data: bytes) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows as {column: cell}) of an RFC 4180 file with CRLF line ends."""
    text = data.decode("utf-8")
    assert text == "" or text.endswith("\r\n")
    rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    header = rows[0]
    for r in rows[1:]:
        assert len(r) == len(header), "every row has a cell per column"
    return header, [dict(zip(header, r, strict=True)) for r in rows[1:]]


def csv_writer_bytes(rows: list[list]) -> bytes:
    """What the csv module writes for rows of values, each value as SPEC section 4 says: text as it is, null
    empty, anything else its compact JSON (numbers as orjson writes them, the data line's own writer)."""
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
    for row in rows:
        writer.writerow([v if type(v) is str else "" if v is None else orjson.dumps(v).decode() for v in row])
    return out.getvalue().encode()


def text_matches(value: Any, text: str, guard: bool = False, xml: bool = False) -> bool:
    """Whether a CSV cell or XML element's text is `value` written as SPEC section 4 says: strings as they
    are, null empty, numbers in their JSON form, true/false, lists and objects as compact JSON text. With the
    formula guard, a text value starting with = + - @ tab CR gets a leading '. In XML, forbidden characters
    are U+FFFD."""
    if xml:
        value = xml_clean(value)
    if value is None:
        return text == ""
    if isinstance(value, str):
        return text == ("'" + value if guard and value.startswith(FORMULA_START) else value)
    if isinstance(value, bool):
        return text == ("true" if value else "false")
    if isinstance(value, int):
        return text == str(value)
    if guard and text.startswith("'"):
        return False
    try:
        parsed = json.loads(text)
    except ValueError:
        return False
    if isinstance(value, float):
        return isinstance(parsed, float | int) and float(parsed) == value
    return strict_equal(parsed, value)


def xml_clean(value: Any, top: bool = True) -> Any:
    """What survives in XML: forbidden characters of a text replaced by U+FFFD. Inside a list or object (JSON
    text) control characters are escaped by JSON itself, so only U+FFFE and U+FFFF are replaced there."""
    if isinstance(value, str):
        return (XML_FORBIDDEN if top else _NONCHARS).sub("\ufffd", value)
    if isinstance(value, dict):
        return {xml_clean(k, False): xml_clean(v, False) for k, v in value.items()}
    if isinstance(value, list):
        return [xml_clean(v, False) for v in value]
    return value


def xml_forbidden_count(value: Any) -> int:
    """How many characters the XML writer must replace in a text (an event name) or in a free-key object: its
    keys and string values are text; a list or object value is JSON text, which escapes control characters
    itself, so only U+FFFE and U+FFFF in it are forbidden."""
    if isinstance(value, str):
        return len(XML_FORBIDDEN.findall(value))
    total = 0
    for k, v in (value or {}).items():
        total += len(XML_FORBIDDEN.findall(k))
        if isinstance(v, str):
            total += len(XML_FORBIDDEN.findall(v))
        elif isinstance(v, dict | list):
            total += len(re.findall("[\ufffe\uffff]", json.dumps(v, ensure_ascii=False)))
    return total


# ---- XML ----------------------------------------------------------------------------------------------------


def xml_pairs(element) -> list[tuple[str, str]]:
    """(key, text) of a free-key object element, in document order: child elements named by their key, or
    `<entry><key>…</key><value>…</value></entry>` pairs."""
    out: list[tuple[str, str]] = []
    for child in element:
        if child.tag == "entry":
            assert [c.tag for c in child] == ["key", "value"]
            out.append((child[0].text or "", child[1].text or ""))
        else:
            assert len(child) == 0
            out.append((child.tag, child.text or ""))
    return out


def xml_object(element) -> dict[str, str]:
    """`xml_pairs` as a dict; every key must be written once."""
    pairs = xml_pairs(element)
    out = dict(pairs)
    assert len(out) == len(pairs), "a key written twice"
    return out


# ---- Parquet ------------------------------------------------------------------------------------------------


def parquet_matches(original: Any, got: Any) -> bool:
    """Whether a value read back from Parquet is `original` as SPEC section 4 allows: an empty object and null
    are null, an integer may be widened to a double (when it fits 53 bits), any value may be widened to its
    compact JSON text (strings stay as they are), a struct holds null for the keys other records had."""
    if original is None or (type(original) is dict and not original):
        return got is None
    if type(got) is str and type(original) is not str:
        try:
            return strict_equal(json.loads(got), original)
        except ValueError:
            return False
    if type(original) is dict:
        return type(got) is dict and all(
            parquet_matches(original.get(k), got.get(k)) for k in set(original) | set(got)
        )
    if type(original) is list:
        return (
            type(got) is list
            and len(got) == len(original)
            and all(parquet_matches(a, b) for a, b in zip(original, got, strict=True))
        )
    if type(original) is int and type(got) is float:
        return abs(original) <= 2**53 and float(original) == got
    return strict_equal(original, got)
