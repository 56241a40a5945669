"""The input contract of SPEC section 1: validate one record and turn it into its JSON data line. Pure.

`RecordChecker.check` takes one decoded record (a dict from a JSON line, an Avro or a Parquet row) and returns
what the run does with it: export it (`Good`), leave it to another run or another export (`None`), or raise
`BadRecord` with a reason. It is the hot path: no per-record objects beyond the output line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

from transforms.naming import PROFILES_NAME, encoded_name_bytes
from transforms.windows import MAX_TS, LocalTime, Window

EVENT_OBJECTS = ("profile", "deviceInfo", "eventProps")
PROFILE_SCALARS = ("name", "email", "phone", "gender", "dob", "platform")
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

# Reasons a record is bad; the manifest counts bad records by these.
UNPARSEABLE = "unparseable"
INVALID_UTF8 = "invalid_utf8"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
OUT_OF_RANGE = "out_of_range"
INVALID_EVENT_NAME = "invalid_event_name"
NAME_TOO_LONG = "object_name_too_long"
INTEGER_OVERFLOW = "integer_outside_64_bits"
TOO_LARGE = "larger_than_max_file_bytes"


class BadRecord(Exception):
    """A record that breaks the input contract; `reason` is one of the codes above, `detail` says more."""

    def __init__(self, reason: str, detail: str, placement: int | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.placement = placement  # the time that places it in a run's window, when usable


@dataclass(frozen=True, slots=True)
class Good:
    key: tuple[str, str]  # (event name or "profiles", yyyymmdd)
    ts: int  # events: ts; profiles: updatedAt
    created: int | None  # profiles: createdAt
    line: bytes  # the JSON data line
    object_id: str | None  # profiles: objectId


def _is_int(v: Any) -> bool:
    return type(v) is int


def _time(v: Any) -> bool:
    return type(v) is int and 0 <= v < MAX_TS


def _check_int64(value: Any) -> int:
    v = int(value)
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise OverflowError(value)
    return v


_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_NINETEEN = b"0" * 19


def long_digit_runs(data: bytes) -> list[int]:
    """Offsets in `data` where a run of 19 or more digits starts (a run of n digits may be listed more than
    once). One pass at memory speed over a whole block: only records there can hold an integer beyond 64 bits.
    """
    zeros = data.translate(_DIGITS_TO_ZERO)
    found = []
    i = zeros.find(_NINETEEN)
    while i >= 0:
        found.append(i)
        i = zeros.find(_NINETEEN, i + 19)
    return found


def check_json_integers(raw: bytes | str) -> None:
    """orjson turns integers beyond 64 bits into floats without a word; the raw text tells them apart.

    Only text holding a run of 19 digits can hold such an integer, so the slow exact parse runs rarely.
    """
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    if _NINETEEN not in data.translate(_DIGITS_TO_ZERO):
        return
    try:
        json.loads(data, parse_int=_check_int64)
    except OverflowError as e:
        raise BadRecord(
            INTEGER_OVERFLOW, f"integer {e.args[0][:40]} is outside the signed 64-bit range"
        ) from None


def decode_json(raw: bytes, long_digits: bool = True) -> Any:
    """orjson with the contract's errors: invalid UTF-8, unparseable, NaN/Infinity, 64-bit overflow.

    long_digits False: the caller knows `raw` holds no run of 19 digits (see `long_digit_runs`).
    """
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        msg = str(e)
        if "UTF-8" in msg or "surrogate" in msg:
            raise BadRecord(INVALID_UTF8, "the record is not valid UTF-8") from None
        if "infinity" in msg.lower() or "nan" in msg.lower():
            raise BadRecord(UNPARSEABLE, "NaN and Infinity are not JSON numbers") from None
        raise BadRecord(UNPARSEABLE, f"not valid JSON ({msg})") from None
    if long_digits:
        check_json_integers(raw)
    return obj


class RecordChecker:
    """Validates records of one export request and renders the good ones in this run's window."""

    def __init__(
        self,
        export_type: str,
        window: Window,
        events: frozenset[str] | None,
        timezone: str,
        run_date: str,
        event_name_budget: int,
    ):
        self.export_type = export_type
        self.window = window
        self.events = events
        self.local = LocalTime(timezone)
        self.run_date = run_date  # profiles' date: the run timestamp's date in the zone
        self.name_budget = event_name_budget
        self.good_names: set[str] = set()

    def check(self, rec: Any) -> Good | None:
        if type(rec) is not dict:
            raise BadRecord(NOT_AN_OBJECT, f"a record must be a JSON object, not {type(rec).__name__}")
        if self.export_type == "events":
            return self._event(rec)
        return self._profile(rec)

    # events ---------------------------------------------------------------------------------------------

    def _event(self, rec: dict) -> Good | None:
        name = rec.get("eventName")
        ts = rec.get("ts")
        captured = rec.get("capturedAt")
        if captured is None:
            captured = ts
        if not (type(name) is str and name in self.good_names and _time(ts) and _time(captured)):
            if not self._event_is_ours(rec, name, ts):
                return None
        window = self.window
        placed = captured if window.field == "capturedAt" else ts
        if not window.start <= placed < window.end:
            return None
        if self.events is not None and name not in self.events:
            return None
        # Field order of SPEC section 4: profile, ts, deviceInfo, eventProps; each only if the input had it.
        line: dict[str, Any] = {}
        profile = rec.get("profile")
        if profile is not None:
            line["profile"] = self._object(profile, "profile", placed)
        stamp, date = self.local.stamp_and_date(ts)
        line["ts"] = stamp
        device = rec.get("deviceInfo")
        if device is not None:
            line["deviceInfo"] = self._object(device, "deviceInfo", placed)
        props = rec.get("eventProps")
        if props is not None:
            line["eventProps"] = self._object(props, "eventProps", placed)
        return Good((name, date), ts, None, orjson.dumps(line), None)

    @staticmethod
    def _object(value: Any, field: str, placement: int) -> dict:
        if type(value) is not dict:
            raise BadRecord(WRONG_TYPE, f"{field} must be an object, not {type(value).__name__}", placement)
        return value

    def _event_is_ours(self, rec: dict, name: Any, ts: Any) -> bool:
        """Check name and times of an event off the fast path.

        Returns True when they are fine (the name is then cached), False when the record is bad but belongs to
        another run or to events this export did not select; raises `BadRecord` when it is bad and ours.
        """
        placement = self._event_placement(ts, rec.get("capturedAt"))
        try:
            if name is None:
                raise BadRecord(MISSING_FIELD, "eventName is missing")
            if type(name) is not str:
                raise BadRecord(WRONG_TYPE, f"eventName must be a string, not {type(name).__name__}")
            self._check_name(name)
            self._check_time(rec, "ts", required=True)
            self._check_time(rec, "capturedAt", required=False)
        except BadRecord as e:
            if placement is not None and self.window.field is not None and not self.window.holds(placement):
                return False
            if (
                self.events is not None
                and type(name) is str
                and name not in self.events
                and self._name_valid(name)
            ):
                return False
            e.placement = placement
            raise
        if len(self.good_names) < 100_000:
            self.good_names.add(name)
        return True

    def _name_valid(self, name: str) -> bool:
        try:
            self._check_name(name)
        except BadRecord:
            return False
        return True

    def _check_name(self, name: str) -> None:
        if not 1 <= len(name) <= 512:
            raise BadRecord(INVALID_EVENT_NAME, f"eventName must have 1 to 512 characters, not {len(name)}")
        if _CONTROL.search(name):
            raise BadRecord(INVALID_EVENT_NAME, "eventName holds a control character")
        if encoded_name_bytes(name) > self.name_budget:
            raise BadRecord(
                NAME_TOO_LONG,
                f"eventName is {encoded_name_bytes(name)} bytes once encoded; object names allow "
                f"{self.name_budget} bytes for it here",
            )

    @staticmethod
    def _check_time(rec: dict, field: str, required: bool) -> None:
        v = rec.get(field)
        if v is None:
            if required:
                raise BadRecord(MISSING_FIELD, f"{field} is missing")
            return
        if not _is_int(v):
            raise BadRecord(WRONG_TYPE, f"{field} must be an integer (epoch seconds), not {type(v).__name__}")
        if not 0 <= v < MAX_TS:
            hint = " (milliseconds? it must be seconds)" if MAX_TS <= v < MAX_TS * 1000 else ""
            raise BadRecord(OUT_OF_RANGE, f"{field} {v} is outside 0..{MAX_TS - 1}{hint}")

    def _event_placement(self, ts: Any, captured: Any) -> int | None:
        """The time that places a bad event in a run: capture time, else event time (SPEC section 5)."""
        first, second = (captured, ts) if self.window.field == "capturedAt" else (ts, captured)
        if _time(first):
            return first
        if _time(second):
            return second
        return None

    # profiles -------------------------------------------------------------------------------------------

    def _profile(self, rec: dict) -> Good | None:
        updated = rec.get("updatedAt")
        created = rec.get("createdAt")
        placement = updated if _time(updated) else (created if _time(created) else None)
        try:
            return self._profile_checked(rec, updated, created)
        except BadRecord as e:
            if placement is not None and self.window.field is not None and not self.window.holds(placement):
                return None
            e.placement = placement
            raise

    def _profile_checked(self, rec: dict, updated: Any, created: Any) -> Good | None:
        oid = rec.get("objectId")
        if oid is None:
            raise BadRecord(MISSING_FIELD, "objectId is missing")
        if type(oid) is not str or not oid:
            raise BadRecord(WRONG_TYPE, "objectId must be a non-empty string")
        self._check_time(rec, "updatedAt", required=True)
        self._check_time(rec, "createdAt", required=False)
        if self.window.field is not None and not self.window.holds(updated):
            return None
        line: dict[str, Any] = {"objectId": oid}
        identity = rec.get("identity")
        if identity is not None:
            if type(identity) not in (str, int):
                raise BadRecord(WRONG_TYPE, "identity must be a string or an integer")
            line["identity"] = identity
        ids = rec.get("all_identities")
        if ids is not None:
            if type(ids) is not list:
                raise BadRecord(WRONG_TYPE, "all_identities must be a list")
            line["all_identities"] = ids
        for field in PROFILE_SCALARS:
            v = rec.get(field)
            if v is not None:
                if type(v) not in (str, int, float, bool):
                    raise BadRecord(
                        WRONG_TYPE, f"{field} must be a string or a number, not {type(v).__name__}"
                    )
                line[field] = v
        if created is not None:
            line["createdAt"] = self.local.stamp(created)
        line["ts"] = self.local.stamp(updated)
        props = rec.get("profileProps")
        if props is not None:
            if type(props) is not dict:
                raise BadRecord(WRONG_TYPE, f"profileProps must be an object, not {type(props).__name__}")
            line["profileProps"] = props
        return Good((PROFILES_NAME, self.run_date), updated, created, orjson.dumps(line), oid)
