"""What the format encoders share: the fields of a data line, values as text, and the text encoder factory.

CSV and XML write every value as text (SPEC section 4): strings as they are, numbers in their JSON form,
`true`/`false`, null as empty text, lists and objects as compact JSON. JSON numbers are rendered by orjson,
the same writer that made the data line, so a CSV cell or XML element reads exactly as the JSON file does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import orjson

from transforms.formats.base import Item, SeriesContext

# Free-key objects of an event data line, in line order ("ts" sits between profile and deviceInfo).
EVENT_OBJECTS = ("profile", "deviceInfo", "eventProps")
# Fields of a profile data line, in line order, before its free-key object.
PROFILE_FIELDS = (
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
)
PROFILE_OBJECT = "profileProps"


def json_text(value: Any) -> str:
    """Compact JSON text of a value, as orjson writes it in the data line."""
    return orjson.dumps(value).decode()


def value_text(value: Any) -> str:
    """A value as CSV/XML text: strings as they are, null empty, anything else its compact JSON text."""
    cls = value.__class__
    if cls is str:
        return value
    if value is None:
        return ""
    if cls is int:
        return str(value)  # a JSON integer reads as Python writes it
    return orjson.dumps(value).decode()


class TextEncoder(Protocol):
    """One series in a text format: every file is header() + encode(item)… for a run of items + footer()."""

    ext: str
    replaced_chars: int

    def header(self) -> bytes: ...

    def encode(self, item: Item) -> bytes: ...

    def footer(self) -> bytes: ...


def text_encoder(fmt: str, ctx: SeriesContext, items: Iterable[Item]) -> TextEncoder:
    """The encoder of `fmt` ("json", "csv" or "xml") for one series.

    `items` is the whole series, in any order; it is read at most once (CSV collects its header keys).
    """
    # Imported here: the format modules import the helpers above.
    from transforms.formats.csv import CsvEncoder
    from transforms.formats.json import JsonEncoder
    from transforms.formats.xml import XmlEncoder

    encoders = {"json": JsonEncoder, "csv": CsvEncoder, "xml": XmlEncoder}
    try:
        cls = encoders[fmt]
    except KeyError:
        raise ValueError(f"unknown text format {fmt!r}; expected one of {sorted(encoders)}") from None
    return cls(ctx, items)
