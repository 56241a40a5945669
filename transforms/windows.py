"""Time arithmetic of SPEC section 2: request times, run timestamps, export windows, local dates. Pure."""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

MAX_TS = 253402300800  # 10000-01-01T00:00:00Z: epoch seconds are below this
MAX_ONE_TIME_DAYS = 45
PERIODS = (4, 6, 8, 12, 24)
_DIGITS = re.compile(r"^\d{8}(\d{6})?$")


def parse_time(text: str) -> int:
    """Epoch seconds of an ISO-8601 time or `yyyymmdd[HHMMSS]`; a time without an offset is UTC."""
    text = text.strip()
    if _DIGITS.match(text):
        fmt = "%Y%m%d%H%M%S" if len(text) == 14 else "%Y%m%d"
        dt = datetime.strptime(text, fmt).replace(tzinfo=UTC)
    else:
        dt = datetime.fromisoformat(text)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


def parse_run_timestamp(text: str) -> int:
    if not re.fullmatch(r"\d{14}", text):
        raise ValueError("expected 14 digits, yyyymmddHHMMSS")
    return calendar.timegm(time.strptime(text, "%Y%m%d%H%M%S"))


def format_run_timestamp(epoch: int) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(epoch))


def default_run_timestamp(frequency: str, every_hours: int | None, settle_minutes: int, now: float) -> int:
    """One-time: now, to the second. Recurring: now minus the settle delay, floored to the period.

    The periods divide a day, so flooring epoch seconds to a multiple of the period aligns to midnight UTC.
    """
    if frequency == "once":
        return int(now)
    period = every_hours * 3600
    return int(now - settle_minutes * 60) // period * period


@dataclass(frozen=True)
class Window:
    """Records whose `field` lies in [start, end); field None means every record (one-time profiles)."""

    field: str | None
    start: int | None
    end: int | None

    def holds(self, value: int) -> bool:
        return self.start <= value < self.end

    def describe(self) -> str:
        if self.field is None:
            return "all records"
        return f"{self.field} in [{iso(self.start)}, {iso(self.end)})"

    def as_dict(self) -> dict:
        return {
            "field": self.field,
            "start": iso(self.start) if self.start is not None else None,
            "end": iso(self.end) if self.end is not None else None,
        }


def export_window(
    export_type: str, frequency: str, run_ts: int, start: int | None, end: int | None, every_hours: int | None
) -> Window:
    if frequency == "recurring":
        field = "capturedAt" if export_type == "events" else "updatedAt"
        return Window(field, run_ts - every_hours * 3600, run_ts)
    if export_type == "profiles":
        return Window(None, None, None)
    return Window("ts", start, end)


def iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LocalTime:
    """Renders epoch seconds as yyyymmddHHMMSS integers and yyyymmdd strings in one IANA zone.

    Called once or twice per record, so it avoids building datetimes: UTC uses `time.gmtime`; other zones look
    up their UTC offset once per hour of time (an hour whose offset changes inside it is computed per second).
    """

    def __init__(self, zone: str = "UTC"):
        self.zone = zone
        self._tz = None if zone == "UTC" else ZoneInfo(zone)
        self._offsets: dict[int, int | None] = {}

    def _offset(self, ts: int) -> int:
        hour = ts // 3600
        off = self._offsets.get(hour, -1)
        if off == -1:
            a = self._exact_offset(hour * 3600)
            b = self._exact_offset(hour * 3600 + 3599)
            off = a if a == b else None
            if len(self._offsets) > 100_000:
                self._offsets.clear()
            self._offsets[hour] = off
        return self._exact_offset(ts) if off is None else off

    def _exact_offset(self, ts: int) -> int:
        utc = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=ts)
        return int(utc.astimezone(self._tz).utcoffset().total_seconds())

    def _tm(self, ts: int) -> time.struct_time:
        if self._tz is None:
            return time.gmtime(ts)
        return time.gmtime(ts + self._offset(ts))

    def stamp(self, ts: int) -> int:
        t = self._tm(ts)
        return (
            (((t.tm_year * 100 + t.tm_mon) * 100 + t.tm_mday) * 100 + t.tm_hour) * 100 + t.tm_min
        ) * 100 + t.tm_sec

    def stamp_and_date(self, ts: int) -> tuple[int, str]:
        t = self._tm(ts)
        day = (t.tm_year * 100 + t.tm_mon) * 100 + t.tm_mday
        return ((day * 100 + t.tm_hour) * 100 + t.tm_min) * 100 + t.tm_sec, str(day)

    def minute(self, m: int) -> tuple[int, str] | None:
        """(yyyymmddHHMM00 as an integer, yyyymmdd) of minute m (epoch minutes), or None when the zone's
        offset changes inside it or is not whole minutes (then render each second with `stamp_and_date`).
        """
        ts = m * 60
        if self._tz is not None:
            off = self._offset(ts)
            if off % 60 or self._offset(ts + 59) != off:
                return None
        return self.stamp_and_date(ts)

    def date(self, ts: int) -> str:
        t = self._tm(ts)
        return str((t.tm_year * 100 + t.tm_mon) * 100 + t.tm_mday)
