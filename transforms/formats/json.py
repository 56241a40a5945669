"""JSON Lines (SPEC section 4): an optional first line naming the series, then the data lines as they are."""

from __future__ import annotations

from collections.abc import Iterable

from transforms.formats.base import PROFILES, Item, SeriesContext


class JsonEncoder:
    """The data line is already the record's JSON (base.py); encoding adds only the line end."""

    ext = "json"

    def __init__(self, ctx: SeriesContext, items: Iterable[Item]):
        self.replaced_chars = 0
        name = "profiles" if ctx.kind == PROFILES else ctx.event_name
        self._header = (name + "\n").encode() if ctx.json_header else b""

    def header(self) -> bytes:
        return self._header

    def encode(self, item: Item) -> bytes:
        return item.line + b"\n"

    def footer(self) -> bytes:
        return b""
