"""The input contract: SPEC section 1, and which run a bad record belongs to (section 5)."""

import orjson
import pytest

from transforms import records as r
from transforms.windows import Window

DAY = 1795737600  # 2026-11-27T00:00:00Z


def checker(export_type="events", window=None, events=None, zone="UTC", budget=900):
    window = window or Window("ts", DAY, DAY + 86400)
    return r.RecordChecker(export_type, window, events, zone, "20261128", budget)


def event(**kw):
    rec = {
        "eventName": "Charged",
        "ts": DAY + 3600,
        "profile": {"identity": "u1"},
        "eventProps": {"Amount": 9.5},
    }
    rec.update(kw)
    return {k: v for k, v in rec.items() if v is not ...}


def bad(rec, c=None):
    with pytest.raises(r.BadRecord) as e:
        (c or checker()).check(rec)
    return e.value


def test_good_event_renders_data_line_in_field_order():
    rec = event(deviceInfo={"os": "iOS"}, capturedAt=DAY + 3605, extra="dropped")
    good = checker().check(rec)
    assert good.key == ("Charged", "20261127")
    assert good.ts == DAY + 3600
    assert good.line == orjson.dumps(
        {
            "profile": {"identity": "u1"},
            "ts": 20261127010000,
            "deviceInfo": {"os": "iOS"},
            "eventProps": {"Amount": 9.5},
        }
    )


def test_timezone_moves_date_and_ts():
    wide = Window("ts", DAY - 86400, DAY + 86400)
    good = checker(window=wide, zone="Asia/Kolkata").check(event(ts=DAY - 3600))  # 23:00 UTC on the 26th
    assert good.key == ("Charged", "20261127")
    assert orjson.loads(good.line)["ts"] == 20261127043000


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b'{"eventName": "x", "ts": 1', r.UNPARSEABLE),
        (b'{"eventName": "x\xff", "ts": 1795737600}', r.INVALID_UTF8),
        (b'{"eventName": "x", "ts": NaN}', r.UNPARSEABLE),
        (b'{"eventName": "x", "ts": 1795737600, "eventProps": {"a": Infinity}}', r.UNPARSEABLE),
        (
            b'{"eventName": "x", "ts": 1795737600, "eventProps": {"a": 99999999999999999999}}',
            r.INTEGER_OVERFLOW,
        ),
        (
            b'{"eventName": "x", "ts": 1795737600, "eventProps": {"a": -9223372036854775809}}',
            r.INTEGER_OVERFLOW,
        ),
    ],
)
def test_decode_errors(raw, reason):
    with pytest.raises(r.BadRecord) as e:
        r.decode_json(raw)
    assert e.value.reason == reason


def test_big_numbers_that_are_fine():
    assert (
        r.decode_json(b'{"a": 9223372036854775807, "b": "99999999999999999999", "c": 1e300}')["a"]
        == 2**63 - 1
    )


@pytest.mark.parametrize(
    "rec, reason",
    [
        (["not", "an", "object"], r.NOT_AN_OBJECT),
        (event(eventName=...), r.MISSING_FIELD),
        (event(eventName=5), r.WRONG_TYPE),
        (event(eventName=""), r.INVALID_EVENT_NAME),
        (event(eventName="a\x07b"), r.INVALID_EVENT_NAME),
        (event(eventName="e" * 513), r.INVALID_EVENT_NAME),
        (event(eventName="é" * 460), r.NAME_TOO_LONG),
        (event(ts=...), r.MISSING_FIELD),
        (event(ts="1795737600"), r.WRONG_TYPE),
        (event(ts=1795737600.0), r.WRONG_TYPE),
        (event(ts=True), r.WRONG_TYPE),
        (event(ts=(DAY + 5) * 1000, capturedAt=DAY + 5), r.OUT_OF_RANGE),
        (event(ts=-1, capturedAt=DAY + 5), r.OUT_OF_RANGE),
        (event(capturedAt="soon"), r.WRONG_TYPE),
        (event(eventProps=[1, 2]), r.WRONG_TYPE),
        (event(profile="u1"), r.WRONG_TYPE),
    ],
)
def test_bad_events(rec, reason):
    assert bad(rec).reason == reason


def test_milliseconds_hint():
    e = bad(event(ts=(DAY + 5) * 1000, capturedAt=DAY + 5))
    assert "milliseconds" in e.detail


def test_bad_record_belongs_to_the_run_holding_its_time():
    recurring = Window("capturedAt", DAY, DAY + 4 * 3600)
    c = checker(window=recurring)
    # capture time in this window: ours, placed by it
    assert bad(event(eventName=5, capturedAt=DAY + 60), c).placement == DAY + 60
    # capture time in another window: another run's, not bad here
    assert c.check(event(eventName=5, capturedAt=DAY + 5 * 3600)) is None
    # no usable capture time: the event time places it
    assert bad(event(eventName=5, capturedAt="x", ts=DAY + 1), c).placement == DAY + 1
    # neither usable: unplaced, dead-lettered by every run
    assert bad(event(eventName=5, ts="x"), c).placement is None


def test_selected_events_skip_other_names_good_or_bad():
    c = checker(events=frozenset({"Charged"}))
    assert c.check(event(eventName="App Launched")) is None
    assert c.check(event(eventName="App Launched", ts="bad")) is None
    assert bad(event(ts="bad"), c).reason == r.WRONG_TYPE
    assert bad(event(eventName="", ts=DAY), c).reason == r.INVALID_EVENT_NAME


def test_window_is_half_open():
    c = checker()
    assert c.check(event(ts=DAY)) is not None
    assert c.check(event(ts=DAY + 86400)) is None
    assert c.check(event(ts=DAY - 1)) is None


def test_profiles():
    c = checker("profiles", window=Window(None, None, None))
    good = c.check(
        {"objectId": "o1", "updatedAt": DAY, "createdAt": DAY - 86400, "identity": 42, "profileProps": {}}
    )
    assert good.key == ("profiles", "20261128")
    assert good.object_id == "o1" and good.created == DAY - 86400
    assert orjson.loads(good.line) == {
        "objectId": "o1",
        "identity": 42,
        "createdAt": 20261126000000,
        "ts": 20261127000000,
        "profileProps": {},
    }
    assert bad({"updatedAt": DAY}, c).reason == r.MISSING_FIELD
    assert bad({"objectId": "o", "updatedAt": DAY * 1000}, c).reason == r.OUT_OF_RANGE
    assert bad({"objectId": "o"}, c).reason == r.MISSING_FIELD
    assert bad({"objectId": "o", "updatedAt": DAY, "profileProps": "x"}, c).reason == r.WRONG_TYPE


def test_recurring_profiles_window_on_updated_at():
    c = checker("profiles", window=Window("updatedAt", DAY, DAY + 6 * 3600))
    assert c.check({"objectId": "o", "updatedAt": DAY + 7 * 3600}) is None
    assert c.check({"objectId": "o", "updatedAt": DAY + 60}) is not None
    assert c.check({"updatedAt": DAY + 7 * 3600}) is None  # bad, but another run's
