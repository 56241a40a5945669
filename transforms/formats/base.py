"""What every format encoder receives: one sorted series of records, as the JSON data lines.

The parse stage turns each good input record into its JSON data line (SPEC section 4, "JSON") before the
shuffle, so the shuffle moves bytes. A series (one event name and one date, or all profiles) reaches the
writer as a sequence of `Item`s, already sorted by (ts, line). Text encoders turn an item into the bytes of
one record in their format; the roller in `transforms/write.py` adds compression and cuts files at the size
limit. Parquet builds Arrow tables instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

EVENTS = "events"
PROFILES = "profiles"


class Item(NamedTuple):
    """One record of a series.

    ts: epoch seconds UTC (events: `ts`; profiles: `updatedAt`).
    created: profiles: `createdAt` in epoch seconds UTC, or None when absent; events: None.
    line: the compact JSON data line of SPEC section 4, without the newline. Events:
        {"profile":…, "ts": yyyymmddHHMMSS, "deviceInfo":…, "eventProps":…} (each key only if the input
        had it). Profiles: {"objectId", "identity", "all_identities", "name", "email", "phone", "gender",
        "dob", "platform", "createdAt": yyyymmddHHMMSS, "ts": yyyymmddHHMMSS, "profileProps"} (only those
        present). The yyyymmddHHMMSS integers are already rendered in the export's timezone.
    """

    ts: int
    created: int | None
    line: bytes


@dataclass(frozen=True)
class SeriesContext:
    """What an encoder knows about the series it encodes."""

    kind: str  # EVENTS or PROFILES
    event_name: str  # the event name, or "profiles"
    csv_formula_guard: bool = False
    json_header: bool = True
