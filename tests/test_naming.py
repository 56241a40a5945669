"""Object names: SPEC section 3."""

import pytest

from transforms import naming

NAMES = [
    "App Launched",
    "Level-Up/Bonus",
    "50% Off",
    "購入完了",
    "a#b[c]*?\\d",
    "Rated 5★",
    "x\x85y",
    "-",
    "%%",
]


@pytest.mark.parametrize("event", NAMES)
def test_event_names_round_trip_and_parse(event):
    name = naming.data_name("req_1", "20261128120000", event, "20261127", 3, "W4R-565-5Z4Z", "csv.gz")
    m = naming.NAME_RE.match(name)
    assert m, name
    assert naming.decode_event_name(m["event"]) == event
    assert (m["req"], m["run"], m["date"], m["idx"], m["db"], m["ext"]) == (
        "req_1",
        "20261128120000",
        "20261127",
        "3",
        "W4R-565-5Z4Z",
        "csv",
    )


def test_encoding_keeps_readable_characters():
    assert naming.encode_event_name("Kauf abgeschlossen") == "Kauf abgeschlossen"
    assert naming.encode_event_name("Level-Up/Bonus") == "Level%2DUp%2FBonus"
    assert naming.encode_event_name("50% Off") == "50%25 Off"


def test_extension():
    assert naming.extension("json", "gzip") == "json.gz"
    assert naming.extension("xml", "none") == "xml"
    assert naming.extension("parquet", "gzip") == "parquet"


def test_event_name_budget_leaves_room_for_four_digit_index():
    budget = naming.event_name_budget("r", "d", "json", 1024)
    event = "e" * budget
    name = naming.data_name("r", "20260101000000", event, "20260101", 9999, "d", "json")
    assert len(name.encode()) == 1024
