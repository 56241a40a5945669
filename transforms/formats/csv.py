"""CSV (SPEC section 4): RFC 4180, CRLF, one header row that is the same in every file of a series.

Columns: events `eventName`, `ts`, then `profile.<key>`, `deviceInfo.<key>`, `eventProps.<key>`; profiles the
data line's fields, then `profileProps.<key>`. The keys are the union over the whole series, sorted by code
point within each group, so every chunk of the series has the same header and a key absent from a record is
an empty cell. With the formula guard, a text cell starting with `=`, `+`, `-`, `@`, tab or CR gets a leading
`'` so spreadsheets do not run it; JSON numbers are not text and are left alone.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
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
        # (object name, its keys in code-point order, a row's worth of empty cells), in column order.
        self._columns = []
        for name in objects:
            names = sorted(keys[name])
            self._columns.append((name, names, [""] * len(names)))
        self._rows = _Rows()
        self._writer = csv.writer(self._rows, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
        columns = ["eventName", "ts"] if self._events else list(PROFILE_FIELDS)
        for name, names, _ in self._columns:
            columns.extend(f"{name}.{key}" for key in names)
        self._header = self._row([self._text(c) for c in columns])
        self._event_name = self._text(ctx.event_name)
        # For `_joined`: the event name as a quoted cell (a name may hold a comma) with the `"` and `,` it adds.
        self._event_field = self._row([self._event_name])[:-2].decode() if self._events else ""
        self._name_quotes = self._event_field.count('"')
        self._name_commas = self._event_field.count(",")
        self._quotes = self._commas = 0

    def header(self) -> bytes:
        return self._header

    def encode(self, item: Item) -> bytes:
        data = orjson.loads(item.line)
        if not self._guard:
            row = self._joined(data)
            if row is not None:
                return row
        return self._row(self._cells(data))

    def _cells(self, data: dict) -> list[str]:
        """The record's cells as text, for csv.writer to quote."""
        cell = self._guarded_cell if self._guard else value_text
        if self._events:
            row = [self._event_name, cell(data.get("ts"))]
        else:
            row = [cell(data.get(field)) for field in PROFILE_FIELDS]
        if self._guard:
            for name, names, blanks in self._columns:
                obj = data.get(name)
                row += [cell(obj.get(key)) for key in names] if obj else blanks
            return row
        return self._with_objects(row, data, value_text)

    def _with_objects(self, row: list[str], data: dict, cell: Callable[[Any], str]) -> list[str]:
        """`row` followed by the cells of the record's objects: text values as they are, others `cell(v)`."""
        for name, names, blanks in self._columns:
            obj = data.get(name)
            if not obj:
                row += blanks
            else:
                get = obj.get
                row += [v if (v := get(key)).__class__ is str else cell(v) for key in names]
        return row

    def _joined(self, data: dict) -> bytes | None:
        """The record's row built by joining its cells, or None when a text cell needs quotes.

        csv.writer looks at every character of every cell; most cells need no quotes, so this joins them as
        they are. The cells that do need quotes are known in advance: lists and objects, as JSON text, nearly
        always hold `"` or `,`, and are quoted here, counting the `"` and `,` they add. A text value needs
        quotes only if it holds `"`, `,`, CR or LF; then the row's count of `"` or `,` is more than the quoted
        cells and separators account for, or it holds a CR or LF, and the caller lets csv.writer write it.
        The row is byte for byte what csv.writer writes (QUOTE_MINIMAL, doubled quotes).
        """
        self._quotes, self._commas = self._name_quotes, self._name_commas
        cell = self._quoted
        if self._events:
            ts = data.get("ts")
            row = [self._event_field, str(ts) if ts.__class__ is int else cell(ts)]
        else:
            row = [v if (v := data.get(field)).__class__ is str else cell(v) for field in PROFILE_FIELDS]
        text = ",".join(self._with_objects(row, data, cell))
        if (
            text.count('"') != self._quotes
            or text.count(",") != len(row) - 1 + self._commas
            or "\n" in text
            or "\r" in text
        ):
            return None
        text += "\r\n"
        return text.encode()

    def _quoted(self, value: Any) -> str:
        """A value other than a string as a CSV cell, quoted as csv.writer would; counts the `"` and `,` of
        a quoted cell. (JSON text holds no CR or LF, and numbers, `true` and `false` need no quotes.)"""
        if value is None:
            return ""
        cls = value.__class__
        if cls is int:
            return str(value)
        text = orjson.dumps(value).decode()
        if cls is list or cls is dict:
            quotes = text.count('"')
            commas = text.count(",")
            if quotes:
                self._quotes += 2 * quotes + 2
                self._commas += commas
                return '"' + text.replace('"', '""') + '"'
            if commas:
                self._quotes += 2
                self._commas += commas
                return '"' + text + '"'
        return text

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
