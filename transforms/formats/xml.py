"""XML (SPEC section 4): one compact `<Event>` or `<Profile>` element per line under `<Events>`/`<Profiles>`.

Values are text (`values.value_text`). Text escapes `&`, `<`, `>`, and writes CR as `&#13;` so a parser
does not turn it into LF, and LF as `&#10;` so every record stays on one line. Characters XML 1.0 forbids
are replaced by U+FFFD and counted in `replaced_chars`.

A `profile` or `deviceInfo` key becomes an element name only when every XML parser accepts it: ASCII
letters, digits, `_`, `-` and `.`, starting with a letter or `_`. Any other key is written as an
`<entry><key>…</key><value>…</value></entry>` inside that element. The XML 1.0 fifth edition allows many more
non-ASCII names, but expat (Python's own parser, and many loaders built on it) follows the older name tables
and rejects some of them (e.g. U+2070, U+3001, U+F900, anything beyond the BMP); a colon would make an
undeclared namespace prefix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from transforms.formats.base import EVENTS, Item, SeriesContext
from transforms.formats.values import EVENT_OBJECTS, PROFILE_FIELDS, PROFILE_OBJECT, value_text

# Everything outside #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF].
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_SPECIAL = re.compile("[&<>\r\n\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ELEMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_KEY_CACHE_LIMIT = 100_000
_OPEN = {name: f"<{name}>" for name in EVENT_OBJECTS}
_CLOSE = {name: f"</{name}>" for name in EVENT_OBJECTS}
_Text = Callable[[Any], str]


class XmlEncoder:
    """Encodes one series as XML, one record per line."""

    ext = "xml"

    def __init__(self, ctx: SeriesContext, items: Iterable[Item]):
        self.replaced_chars = 0
        self._events = ctx.kind == EVENTS
        root = "Events" if self._events else "Profiles"
        self._header = f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}>\n'.encode()
        self._footer = f"</{root}>\n".encode()
        # The event name is written in every record; its replaced characters count every time.
        self._name, self._name_replaced = _character_data(ctx.event_name) if self._events else ("", 0)
        # key -> its element's open and close tags, or None when it must be an entry.
        self._tags: dict[str, tuple[str, str] | None] = {}
        # key -> the markup around its value, for text that needs no escaping: in profile and deviceInfo
        # (an element, or an entry) and in eventProps (always an entry).
        self._element_heads: dict[str, tuple[str, str]] = {}
        self._entry_heads: dict[str, tuple[str, str]] = {}

    def header(self) -> bytes:
        return self._header

    def footer(self) -> bytes:
        return self._footer

    def encode(self, item: Item) -> bytes:
        return self.encode_data(orjson.loads(item.line), item.line)

    def encode_data(self, data: dict, line: bytes) -> bytes:
        """The element of a record already decoded: `data` is its data line as a dict, and `line` that line's
        JSON text, or any JSON text that holds all of its strings, such as the input record it came from (only
        the check for text to escape reads it)."""
        if not _may_need_escapes(line):
            if self._events:
                return self._plain_event(data)
            text, key_text = value_text, str
        else:
            text, key_text = self._text, self._escape
        if self._events:
            out = ["<Event><ts>", value_text(data.get("ts")), "</ts><eventName>", self._name, "</eventName>"]
            self.replaced_chars += self._name_replaced
            for name in EVENT_OBJECTS:
                obj = data.get(name)
                if obj is None:
                    continue
                out.append(_OPEN[name])
                if name == "eventProps":
                    _entries(out, obj, text, key_text)
                else:
                    self._elements(out, obj, text, key_text)
                out.append(_CLOSE[name])
            out.append("</Event>\n")
        else:
            out = ["<Profile>"]
            for name in PROFILE_FIELDS:
                if name in data:
                    out += ("<", name, ">", text(data[name]), "</", name, ">")
            obj = data.get(PROFILE_OBJECT)
            if obj is not None:
                out.append(f"<{PROFILE_OBJECT}>")
                _entries(out, obj, text, key_text)
                out.append(f"</{PROFILE_OBJECT}>")
            out.append("</Profile>\n")
        return "".join(out).encode()

    def _plain_event(self, data: dict) -> bytes:
        """`encode_data` of an event none of whose text needs escaping (the common case), with each key's
        markup looked up once per series rather than built per record."""
        out = ["<Event><ts>", value_text(data.get("ts")), "</ts><eventName>", self._name, "</eventName>"]
        self.replaced_chars += self._name_replaced
        append = out.append
        for name in EVENT_OBJECTS:
            obj = data.get(name)
            if obj is None:
                continue
            append(_OPEN[name])
            heads = self._entry_heads if name == "eventProps" else self._element_heads
            for key, value in obj.items():
                head = heads.get(key)
                if head is None:
                    head = _plain_markup(key, name == "eventProps")
                    if len(heads) < _KEY_CACHE_LIMIT:
                        heads[key] = head
                append(head[0])
                append(value if value.__class__ is str else value_text(value))
                append(head[1])
            append(_CLOSE[name])
        append("</Event>\n")
        return "".join(out).encode()

    def _elements(self, out: list[str], obj: dict[str, Any], text: _Text, key_text: _Text) -> None:
        tags = self._tags
        for key, value in obj.items():
            try:
                tag = tags[key]
            except KeyError:
                tag = _element_tags(key)
                if len(tags) < _KEY_CACHE_LIMIT:
                    tags[key] = tag
            if tag is None:
                out += ("<entry><key>", key_text(key), "</key><value>", text(value), "</value></entry>")
            else:
                out += (tag[0], text(value), tag[1])

    def _text(self, value: Any) -> str:
        return self._escape(value_text(value))

    def _escape(self, text: str) -> str:
        if _SPECIAL.search(text) is None:
            return text
        text, replaced = _character_data(text)
        self.replaced_chars += replaced
        return text


def _element_tags(key: str) -> tuple[str, str] | None:
    """The open and close tags of a key's element, or None when it must be an entry. "entry" is taken: it is
    the element of a key that is not an XML name."""
    return (f"<{key}>", f"</{key}>") if _ELEMENT_NAME.fullmatch(key) and key != "entry" else None


def _plain_markup(key: str, entry: bool) -> tuple[str, str]:
    """The markup before and after a value of `key` whose text needs no escaping: its element, or (always in
    eventProps) an entry."""
    tag = None if entry else _element_tags(key)
    return tag if tag is not None else (f"<entry><key>{key}</key><value>", "</value></entry>")


def _entries(out: list[str], obj: dict[str, Any], text: _Text, key_text: _Text) -> None:
    for key, value in obj.items():
        out += ("<entry><key>", key_text(key), "</key><value>", text(value), "</value></entry>")


# Every byte but those that can begin what needs escaping: translate() deletes them all in one pass.
_NOT_ESCAPE_BYTES = bytes(c for c in range(256) if c not in b"\\&<>\xef")


def _may_need_escapes(line: bytes) -> bool:
    """Whether a JSON text may decode to a character that needs escaping or replacing.

    Those are &, <, >, CR, LF and control characters (which valid JSON holds only as backslash escapes), and
    U+FFFE and U+FFFF (UTF-8 EF BF BE and EF BF BF). One translate() pass keeps only the bytes that may
    start one (~1.3 µs for a 600-byte line, against ~3.5 µs for six searches); most lines keep none.
    """
    found = line.translate(None, _NOT_ESCAPE_BYTES)
    if not found:
        return False
    if found.strip(b"\xef"):  # a backslash, &, < or >
        return True
    return b"\xef\xbf\xbe" in line or b"\xef\xbf\xbf" in line


def _character_data(text: str) -> tuple[str, int]:
    """Character data for `text`, and how many forbidden characters it replaced."""
    text = (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("\r", "&#13;")
        .replace("\n", "&#10;")
    )
    return _FORBIDDEN.subn("\ufffd", text)


class PreEncodedXml:
    """A series whose records are already `<Event>`/`<Profile>` elements (encoded before the shuffle, where
    the decoded record was at hand): the header and footer of the series, and each record as it is."""

    ext = "xml"

    def __init__(self, ctx: SeriesContext):
        self._xml = XmlEncoder(ctx, ())
        self.replaced_chars = 0  # counted where the records were encoded

    def header(self) -> bytes:
        return self._xml.header()

    def footer(self) -> bytes:
        return self._xml.footer()

    def encode(self, item: Item) -> bytes:
        return item.line
