"""Parquet (SPEC section 4): one Arrow schema per series, the union of its records, widened where types differ.

An events series is read once, whole and in order, by Arrow's JSON reader (`series_table`: types and table in
one pass), or with the whole series' types when it is written in shards. Where Arrow would read a line
otherwise than the contract says, `series_schema` and `to_table` do it in Python, so every chunk of the series
has the same schema.

Widening of a property whose JSON type differs between records: integer and double give double when every
integer seen fits in 53 bits (|v| <= 2**53, exact in a double), otherwise string; objects merge field by
field, lists merge their elements; any other mix gives string, where strings stay as they are and other values
become their compact JSON text. Null and the empty object (which is null here) merge with anything. A
property that is only ever null, or a list that is only ever empty, is typed string. Struct fields are sorted
by code point. A free-key object (`profile`, `deviceInfo`, `eventProps`, `profileProps`) with no key in the
whole series has no column: Parquet cannot store a struct without fields.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from transforms.formats.base import EVENTS, Item, SeriesContext
from transforms.formats.values import EVENT_OBJECTS, PROFILE_FIELDS, PROFILE_OBJECT, json_text

TIMESTAMP = pa.timestamp("us", tz="UTC")
_PROFILE_COLUMNS = tuple(f for f in PROFILE_FIELDS if f not in ("createdAt", "ts"))  # objectId … platform
_MAX_EXACT = 2**53
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

# Inferred types: these leaf markers, _List, _Struct, or None for "only nulls seen so far".


class _Leaf(enum.Enum):
    """Leaf types; members stay themselves through pickling (types travel from the parse stage in RunRefs)."""

    BOOL = "bool"
    INT = "int"  # every integer seen fits in 53 bits
    BIG_INT = "big_int"  # some integer does not
    DOUBLE = "double"
    STRING = "string"


_BOOL, _INT, _BIG_INT, _DOUBLE, _STRING = _Leaf.BOOL, _Leaf.INT, _Leaf.BIG_INT, _Leaf.DOUBLE, _Leaf.STRING
_ABSENT = object()  # a key not seen yet
_OTHER = object()  # a value whose type is not a leaf in _SAME
_SAME = {str: _STRING, int: _INT, float: _DOUBLE, bool: _BOOL}  # the leaf type a value keeps unchanged


class _List:
    __slots__ = ("item",)

    def __init__(self) -> None:
        self.item: Any = None


class _Struct:
    __slots__ = ("fields",)

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}


def _merge(t: Any, v: Any) -> Any:
    """The type of a property after seeing value `v` where type `t` was seen before."""
    if v is None or t is _STRING:
        return t
    cls = v.__class__
    if cls is str:
        return _STRING
    if cls is int:
        if -_MAX_EXACT <= v <= _MAX_EXACT:
            if t is None:
                return _INT
            return t if t is _INT or t is _BIG_INT or t is _DOUBLE else _STRING
        if t is None or t is _INT or t is _BIG_INT:
            return _BIG_INT if _INT64_MIN <= v <= _INT64_MAX else _STRING
        return _STRING
    if cls is float:
        return _DOUBLE if t is None or t is _INT or t is _DOUBLE else _STRING
    if cls is bool:
        return _BOOL if t is None or t is _BOOL else _STRING
    if cls is dict:
        if not v:
            return t
        if t is None:
            t = _Struct()
        elif t.__class__ is not _Struct:
            return _STRING
        fields = t.fields
        for key, x in v.items():
            seen = fields.get(key, _ABSENT)
            # Most values repeat the type already seen: skip the call then.
            if seen is _STRING or (
                _SAME.get(x.__class__, _OTHER) is seen
                and (seen is not _INT or -_MAX_EXACT <= x <= _MAX_EXACT)
            ):
                continue
            fields[key] = _merge(None if seen is _ABSENT else seen, x)
        return t
    if cls is list:
        if t is None:
            t = _List()
        elif t.__class__ is not _List:
            return _STRING
        item = t.item
        for x in v:
            item = _merge(item, x)
        t.item = item
        return t
    raise TypeError(f"not a JSON value: {cls.__name__}")


def _arrow_type(t: Any) -> pa.DataType:
    if t is None or t is _STRING:
        return pa.string()
    if t is _INT or t is _BIG_INT:
        return pa.int64()
    if t is _DOUBLE:
        return pa.float64()
    if t is _BOOL:
        return pa.bool_()
    if t.__class__ is _List:
        return pa.list_(_arrow_type(t.item))
    return pa.struct([pa.field(key, _arrow_type(t.fields[key])) for key in sorted(t.fields)])


def series_schema(ctx: SeriesContext, items: Iterable[Item]) -> pa.Schema:
    """The schema of a whole series: every property of every record, widened where their types differ."""
    return schema_of(ctx, lines_types(ctx, [item.line for item in items]))


def lines_types(ctx: SeriesContext, lines: list[bytes]) -> dict[str, Any]:
    """The property types of records given as data lines (part of a series, or all of it): what
    `merge_types` combines and `schema_of` turns into the schema."""
    if ctx.kind == EVENTS:
        return blob_types(ctx, b"\n".join(lines))
    return _types_in_python(ctx, lines)


def blob_types(ctx: SeriesContext, blob) -> dict[str, Any]:
    """`lines_types` of events data lines given as one blob (bytes or a view of them), each line followed by
    a newline or the last one not."""
    read = _read_in_arrow(blob)
    if read is not None:
        return read[0]
    return _types_in_python(ctx, [line for line in bytes(blob).split(b"\n") if line])


def merge_types(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The types of two parts of a series merged: what `lines_types` gives for both parts together."""
    return {name: _merge_type(a[name], b[name]) for name in a}


def _merge_type(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    if a is _STRING or b is _STRING:
        return _STRING
    if a.__class__ is _Struct and b.__class__ is _Struct:
        out = _Struct()
        out.fields = dict(a.fields)
        for key, t in b.fields.items():
            out.fields[key] = _merge_type(out.fields[key], t) if key in out.fields else t
        return out
    if a.__class__ is _List and b.__class__ is _List:
        out = _List()
        out.item = _merge_type(a.item, b.item)
        return out
    if a.__class__ in (_Struct, _List) or b.__class__ in (_Struct, _List) or _BOOL in (a, b):
        return _STRING if a is not b else a
    if a is b:
        return a
    return {frozenset((_INT, _BIG_INT)): _BIG_INT, frozenset((_INT, _DOUBLE)): _DOUBLE}.get(
        frozenset((a, b)), _STRING
    )


def _types_in_python(ctx: SeriesContext, lines: Iterable[bytes]) -> dict[str, Any]:
    names = EVENT_OBJECTS if ctx.kind == EVENTS else (*_PROFILE_COLUMNS, PROFILE_OBJECT)
    types: dict[str, Any] = dict.fromkeys(names)
    loads = orjson.loads
    for line in lines:
        data = loads(line)
        for name in names:
            value = data.get(name)
            if value is not None:
                types[name] = _merge(types[name], value)
    return types


def schema_of(ctx: SeriesContext, types: dict[str, Any]) -> pa.Schema:
    def field(name: str) -> pa.Field:
        return pa.field(name, _arrow_type(types[name]))

    if ctx.kind == EVENTS:
        fields = [pa.field("ts", TIMESTAMP), pa.field("eventName", pa.string())]
        fields += [field(name) for name in EVENT_OBJECTS if types[name] is not None]
    else:
        fields = [field(name) for name in _PROFILE_COLUMNS]
        fields += [pa.field("createdAt", TIMESTAMP), pa.field("ts", TIMESTAMP)]
        if types[PROFILE_OBJECT] is not None:
            fields.append(field(PROFILE_OBJECT))
    return pa.schema(fields)


def to_table(ctx: SeriesContext, schema: pa.Schema, items: Sequence[Item]) -> pa.Table:
    """A table of `schema` (from `series_schema` of the whole series) holding `items`, in their order."""
    if ctx.kind == EVENTS:
        table = _events_table_in_arrow(ctx, schema, items)
        if table is not None:
            return table
    return _table_in_python(ctx, schema, items)


def _table_in_python(ctx: SeriesContext, schema: pa.Schema, items: Sequence[Item]) -> pa.Table:
    loads = orjson.loads
    records = [loads(item.line) for item in items]
    arrays = []
    for f in schema:
        name = f.name
        if name == "ts":
            arrays.append(pa.array([item.ts * 1_000_000 for item in items], TIMESTAMP))
        elif name == "createdAt":
            created = [None if item.created is None else item.created * 1_000_000 for item in items]
            arrays.append(pa.array(created, TIMESTAMP))
        elif name == "eventName" and ctx.kind == EVENTS:
            arrays.append(pa.array([ctx.event_name] * len(items), pa.string()))
        else:
            arrays.append(_column([r.get(name) for r in records], f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


# The same in Arrow's JSON reader, in C++, for events whose data lines are plain enough that its reading is
# ours: no empty object (Arrow reads {} as a struct of nulls, which is null here; looked for in the text) and
# no number beyond 2**53 (looked for in the table Arrow read: then every integer fits 53 bits, and Arrow's
# int-to-double promotion is exact, as the widening rule wants). A type mix it cannot read (a property widened
# to string, say) raises, and the Python path above decides. tests/test_properties.py holds both paths to the
# same schemas and tables.

_EMPTY_OBJECT = re.compile(rb"\{\}")
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)


def _arrow_can_read(blob) -> bool:
    """Whether Arrow may read these data lines (bytes or a view of them): none holds an empty object. (A
    `{}` inside a string counts too: it only sends the lines to the Python path.)"""
    return _EMPTY_OBJECT.search(blob) is None


def _numbers_fit(arrays: Iterable) -> bool:
    """Whether every number in these Arrow arrays (or chunked arrays), nested ones included, is within
    2**53 of zero: integers up to 2**53, doubles below it. Then every integer of the lines Arrow read fits 53
    bits (one beyond, read as a double, rounds to 2**53 or more), so its int-to-double promotion was exact
    and an integer column is what `_merge` calls _INT."""
    for array in arrays:
        t = array.type
        if pa.types.is_integer(t) or pa.types.is_floating(t):
            low, high = pa.compute.min_max(array).values()
            if low.is_valid and not (
                -_MAX_EXACT <= low.as_py() and high.as_py() <= _MAX_EXACT
                if pa.types.is_integer(t)
                else -_MAX_EXACT < low.as_py() and high.as_py() < _MAX_EXACT
            ):
                return False
        elif pa.types.is_struct(t) or pa.types.is_list(t):
            chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
            for chunk in chunks:
                if not _numbers_fit(chunk.flatten() if pa.types.is_struct(t) else [chunk.flatten()]):
                    return False
    return True


def _read_json(blob, schema: pa.Schema | None) -> pa.Table:
    import pyarrow.json as pj

    read = pj.ReadOptions(use_threads=False, block_size=max(len(blob) + 1, 1 << 20))  # one block
    parse = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore" if schema else "infer")
    return pj.read_json(pa.BufferReader(blob), read_options=read, parse_options=parse)


def _read_in_arrow(blob) -> tuple[dict[str, Any], pa.Table] | None:
    """The events' property types as Arrow infers them and the objects' columns it read, or None when only
    Python can tell."""
    if not len(blob) or not _arrow_can_read(blob):
        return None
    try:
        table = _read_json(blob, None)
        if not _numbers_fit(table.columns):
            return None
        schema = table.schema
        types = {
            name: _from_arrow(schema.field(name).type) if name in schema.names else None
            for name in EVENT_OBJECTS
        }
    except (*_ARROW_ERRORS, _Unsure):
        return None
    return types, table.select([name for name in EVENT_OBJECTS if name in schema.names])


def _plain(t: pa.DataType) -> bool:
    """Whether Arrow read values of type `t` as the writer would: every type `_from_arrow` maps but the
    timestamps and dates Arrow sees in some strings (the writer reads those as text)."""
    if pa.types.is_list(t):
        return _plain(t.value_type)
    if pa.types.is_struct(t):
        return all(_plain(f.type) for f in t)
    return not (pa.types.is_timestamp(t) or pa.types.is_date(t))


def series_table(
    ctx: SeriesContext, blob, ts: pa.Array, types: dict[str, Any] | None = None
) -> pa.Table | None:
    """The events table of a series, or of a shard of it, in one pass of Arrow's JSON reader over its data
    lines: `blob` (bytes or a view of them) holds them in series order, each followed by a newline, `ts`
    their epoch seconds. `types`: the whole series' (a shard's schema is its series'); None: these lines'
    own, inferred in the same pass. None when only Python reads the lines right (an empty object, a long
    integer, a property widened to text): then `to_table` does."""
    if types is not None:
        return _objects_table(ctx, schema_of(ctx, types), blob, ts)
    read = _read_in_arrow(blob)
    if read is None:
        return None
    types, table = read
    if not all(_plain(f.type) for f in table.schema):
        table = None  # Arrow saw timestamps in some strings: read again, as text
    return _objects_table(ctx, schema_of(ctx, types), blob, ts, table)


def _objects_table(
    ctx: SeriesContext, schema: pa.Schema, blob, ts: pa.Array, table: pa.Table | None = None
) -> pa.Table | None:
    """The events table of `schema` from data lines and their epoch seconds `ts`; `table`: the objects as
    Arrow read them already, in types that cast to the schema's (only struct fields reordered and null-only
    values typed). None when Arrow cannot read the lines as the writer would."""
    objects = [f for f in schema if f.name in EVENT_OBJECTS]
    if table is None:
        if not len(blob) or not _arrow_can_read(blob):
            return None
        try:
            table = _read_json(blob, pa.schema(objects))
        except _ARROW_ERRORS:
            return None
        if not _numbers_fit(table.columns):
            return None
    if table.num_rows != len(ts):
        return None
    columns = [table.column(f.name).cast(f.type).combine_chunks() for f in objects]
    return _events_table(ctx, schema, pa.compute.multiply(ts, 1_000_000).cast(TIMESTAMP), columns)


def _events_table(ctx: SeriesContext, schema: pa.Schema, ts: pa.Array, objects: list) -> pa.Table:
    """An events table of `schema`: `ts` (a TIMESTAMP array), the event name in every row, then the objects'
    columns."""
    name = pa.array([ctx.event_name] * len(ts), pa.string())
    return pa.Table.from_arrays([ts, name, *objects], schema=schema)


class _Unsure(Exception):
    """An inferred Arrow type with no counterpart here."""


def _from_arrow(t: pa.DataType) -> Any:
    """The type `_merge` gives values that Arrow inferred as `t` (integers known to fit 53 bits)."""
    if pa.types.is_null(t):
        return None
    if pa.types.is_boolean(t):
        return _BOOL
    if pa.types.is_integer(t):
        return _INT
    if pa.types.is_floating(t):
        return _DOUBLE
    if pa.types.is_string(t) or pa.types.is_timestamp(t) or pa.types.is_date(t):
        return _STRING  # Arrow sees timestamps in some strings; with our schema it reads them as text
    if pa.types.is_list(t):
        out = _List()
        out.item = _from_arrow(t.value_type)
        return out
    if pa.types.is_struct(t) and t.num_fields:
        out = _Struct()
        out.fields = {f.name: _from_arrow(f.type) for f in t}
        return out
    raise _Unsure(str(t))


def _events_table_in_arrow(ctx: SeriesContext, schema: pa.Schema, items: Sequence[Item]) -> pa.Table | None:
    ts = pa.array([item.ts for item in items], pa.int64())
    return _objects_table(ctx, schema, b"\n".join([item.line for item in items]), ts)


# Converting values to a schema. Arrow converts int to double itself and raises on any value that does not
# fit its type, but it reads an empty object as a struct of nulls rather than null. So a column is built in
# two tries. The first only makes empty objects in struct positions null. If Arrow then refuses a value (a
# property widened to string, or an empty object in a list or scalar position), the second try renders
# values in string positions as JSON text and makes every empty object null. Both walk the records row by
# row (cache-friendly) and change dicts in place, the first only in struct positions, which the second
# treats the same way.

_Converter = Callable[[Any], Any]


def _column(values: list[Any], typ: pa.DataType) -> pa.Array:
    first = _converter(typ, full=False)
    try:
        return pa.array(values if first is None else _convert_all(first, values), typ)
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        pass
    return pa.array(_convert_all(_converter(typ, full=True), values), typ)


def _null_if_empty(v: dict[str, Any]) -> dict[str, Any] | None:
    return v or None


def _convert_all(convert: _Converter, values: list[Any]) -> list[Any]:
    if convert is _null_if_empty:
        return [v or None for v in values]
    return [None if v is None else convert(v) for v in values]


def _converter(typ: pa.DataType, full: bool) -> _Converter | None:
    """A function of a non-null value giving what Arrow reads as `typ`, or None when values need no change.

    Not `full`: only empty objects in struct positions become null. `full`: also non-strings in string
    positions become their JSON text and every empty object becomes null.
    """
    if pa.types.is_struct(typ):
        text_keys = frozenset(f.name for f in typ if full and pa.types.is_string(f.type))
        nested = [
            (f.name, c)
            for f in typ
            if (pa.types.is_struct(f.type) or pa.types.is_list(f.type)) and (c := _converter(f.type, full))
        ]
        if not full and not nested:
            return _null_if_empty

        def struct(v: dict[str, Any]) -> dict[str, Any] | None:
            if not v:
                return None
            if full:
                for key, x in v.items():  # replacing values while iterating is allowed
                    cls = x.__class__
                    if cls is str or x is None:
                        continue
                    if key in text_keys:
                        v[key] = _as_text(x)
                    elif cls is dict and not x:
                        v[key] = None
            for key, convert in nested:
                x = v.get(key)
                if x is not None:
                    v[key] = convert(x)
            return v

        return struct
    if pa.types.is_list(typ):
        item = _converter(typ.value_type, full)
        if item is None:
            return None  # Arrow refuses an empty object here, so the second try handles it
        return lambda v: None if v.__class__ is dict else _convert_all(item, v)
    if not full:
        return None
    return _as_text if pa.types.is_string(typ) else _leaf


def _leaf(v: Any) -> Any:
    return None if v.__class__ is dict else v  # only an empty object can be here


def _as_text(v: Any) -> str | None:
    if v.__class__ is str:
        return v
    if v == {}:
        return None
    return json_text(v)
