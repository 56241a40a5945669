"""CSV (SPEC section 4): RFC 4180, CRLF, one header row that is the same in every file of a series.

Columns: events `eventName`, `ts`, then `profile.<key>`, `deviceInfo.<key>`, `eventProps.<key>`; profiles the
data line's fields, then `profileProps.<key>`. The keys are the union over the whole series, sorted by code
point within each group, so every chunk of the series has the same header and a key absent from a record is
an empty cell. With the formula guard, a text cell starting with `=`, `+`, `-`, `@`, tab or CR gets a leading
`'` so spreadsheets do not run it; JSON numbers are not text and are left alone.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any

import orjson

from transforms.formats.base import EVENTS, Item, SeriesContext
from transforms.formats.values import EVENT_OBJECTS, PROFILE_FIELDS, PROFILE_OBJECT, value_text

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _guarded(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_START) else text


def add_keys(found: Iterable[tuple[str, set]], data: dict) -> None:
    """Add the keys of each object of a decoded data line to its set: (object name, set) pairs."""
    for name, keys in found:
        obj = data.get(name)
        if obj:
            keys.update(obj)


class _Rows(list):
    """A file-like list: csv.writer writes each row to it with one write() call."""

    write = list.append


class CsvEncoder:
    """Encodes one series as CSV rows; the constructor reads the whole series once for the header keys, unless
    they are given."""

    ext = "csv"

    def __init__(
        self, ctx: SeriesContext, items: Iterable[Item], keys: dict[str, Iterable[str]] | None = None
    ):
        """`keys`: each object's keys over the whole series when known already (then `items` is not read)."""
        self.replaced_chars = 0
        self._guard = ctx.csv_formula_guard
        self._events = ctx.kind == EVENTS
        objects = EVENT_OBJECTS if self._events else (PROFILE_OBJECT,)
        if keys is None:
            keys = {name: set() for name in objects}
            for item in items:
                add_keys(keys.items(), orjson.loads(item.line))
        # (object name, its keys in code-point order), in column order.
        self._objects = [(name, sorted(keys[name])) for name in objects]
        self._rows = _Rows()
        self._writer = csv.writer(self._rows, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
        columns = ["eventName", "ts"] if self._events else list(PROFILE_FIELDS)
        for name, names in self._objects:
            columns.extend(f"{name}.{key}" for key in names)
        self._header = self._row([self._text(c) for c in columns])
        self._event_name = self._text(ctx.event_name)

    def header(self) -> bytes:
        return self._header

    def encode(self, item: Item) -> bytes:
        data = orjson.loads(item.line)
        cell = self._guarded_cell if self._guard else value_text
        if self._events:
            row = [self._event_name, cell(data.get("ts"))]
        else:
            row = [cell(data.get(field)) for field in PROFILE_FIELDS]
        for name, names in self._objects:
            obj = data.get(name)
            if not obj:
                row += [""] * len(names)
            elif self._guard:
                row += [cell(obj.get(key)) for key in names]
            else:
                get = obj.get
                row += [v if (v := get(key)).__class__ is str else value_text(v) for key in names]
        return self._row(row)

    def footer(self) -> bytes:
        return b""

    def _text(self, text: str) -> str:
        return _guarded(text) if self._guard else text

    @staticmethod
    def _guarded_cell(value: Any) -> str:
        return _guarded(value) if value.__class__ is str else value_text(value)

    def _row(self, cells: list[str]) -> bytes:
        self._writer.writerow(cells)
        return self._rows.pop().encode()
