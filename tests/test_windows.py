"""Window arithmetic and local rendering: SPEC section 2."""

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from transforms import windows


def test_parse_time_forms():
    assert windows.parse_time("20261127") == 1795737600
    assert windows.parse_time("20261127010203") == 1795737600 + 3723
    assert windows.parse_time("2026-11-27T01:02:03Z") == 1795737600 + 3723
    assert windows.parse_time("2026-11-27T06:32:03+05:30") == 1795737600 + 3723
    with pytest.raises(ValueError):
        windows.parse_time("yesterday")


def test_recurring_default_floors_after_settling():
    now = windows.parse_time("20261128041400")  # 04:14, settle 15 min -> 03:59 -> floor 4h -> 00:00
    assert (
        windows.format_run_timestamp(windows.default_run_timestamp("recurring", 4, 15, now))
        == "20261128000000"
    )
    now = windows.parse_time("20261128041500")
    assert (
        windows.format_run_timestamp(windows.default_run_timestamp("recurring", 4, 15, now))
        == "20261128040000"
    )
    assert windows.default_run_timestamp("once", None, 15, now + 0.7) == now


def test_recurring_windows_tile_a_day():
    day = windows.parse_time("20261127")
    ws = [
        windows.export_window("events", "recurring", day + h * 3600, None, None, 4) for h in range(4, 28, 4)
    ]
    assert ws[0].start == day and ws[-1].end == day + 86400
    assert all(a.end == b.start for a, b in zip(ws, ws[1:], strict=False))
    assert all(w.field == "capturedAt" for w in ws)
    assert windows.export_window("profiles", "recurring", day, None, None, 6).field == "updatedAt"
    assert windows.export_window("profiles", "once", day, None, None, None).field is None


@pytest.mark.parametrize(
    "zone", ["UTC", "Asia/Kolkata", "America/New_York", "Australia/Lord_Howe", "Europe/Berlin"]
)
def test_local_time_matches_zoneinfo(zone):
    lt = windows.LocalTime(zone)
    tz = ZoneInfo(zone)
    start = windows.parse_time("20260301")
    for ts in range(start, start + 400 * 86400, 3 * 3600 + 7 * 60 + 13):  # crosses every DST change of 2026
        dt = datetime.fromtimestamp(ts, tz)
        assert lt.stamp(ts) == int(dt.strftime("%Y%m%d%H%M%S")), (zone, ts)
        assert lt.date(ts) == dt.strftime("%Y%m%d")
