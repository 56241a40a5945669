"""Object names of SPEC section 3: build them, and parse them back."""

from __future__ import annotations

import hashlib
import re

NAME_RE = re.compile(
    r"^(?P<req>[A-Za-z0-9_]+)-(?P<run>\d{14})-(?P<event>[^-/]+)-(?P<date>\d{8})-(?P<idx>\d+)"
    r"-(?P<db>[A-Za-z0-9_-]+)\.(?P<ext>json|csv|xml|parquet)(?:\.gz)?$"
)

# Characters percent-encoded in an event name: these, and the control characters.
_SPECIAL = set("%-/\\#[]*?")
PROFILES_NAME = "profiles"
MANIFESTS_DIR = "_manifests"
ERRORS_DIR = "_errors"

# Room kept for the file index when checking an event's name against the object name limit: a series may
# have up to 10**INDEX_DIGITS_RESERVED files (at 100 MiB each, far beyond any real series).
INDEX_DIGITS_RESERVED = 4


def _needs_escape(ch: str) -> bool:
    o = ord(ch)
    return ch in _SPECIAL or o < 0x20 or o == 0x7F or 0x80 <= o <= 0x9F


def encode_event_name(name: str) -> str:
    """Percent-encode the characters SPEC section 3 lists, as their UTF-8 bytes; keep everything else."""
    if not any(_needs_escape(c) for c in name):
        return name
    out = []
    for ch in name:
        if _needs_escape(ch):
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out)


def decode_event_name(encoded: str) -> str:
    """The inverse of `encode_event_name`."""
    if "%" not in encoded:
        return encoded
    raw = bytearray()
    i = 0
    while i < len(encoded):
        ch = encoded[i]
        if ch == "%":
            raw.append(int(encoded[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(ch.encode("utf-8"))
            i += 1
    return raw.decode("utf-8")


def extension(fmt: str, compression: str) -> str:
    """`json`, `csv.gz`, `parquet`: gzip adds `.gz` to text formats only (Parquet compresses inside)."""
    if fmt != "parquet" and compression == "gzip":
        return f"{fmt}.gz"
    return fmt


def data_name(
    request_id: str, run_ts: str, event_name: str, date: str, index: int, database_id: str, ext: str
) -> str:
    return f"{request_id}-{run_ts}-{encode_event_name(event_name)}-{date}-{index}-{database_id}.{ext}"


def run_prefix(request_id: str, run_ts: str) -> str:
    """Every data object of one run starts with this."""
    return f"{request_id}-{run_ts}-"


def shard_part_name(request_id: str, run_ts: str, event_name: str, date: str, shard: int, n: int) -> str:
    """The temporary name of file `n` of one shard of a large series, until the files of all its shards are
    numbered; a run's orphan cleanup removes any left behind (it starts with the run prefix). Not a data
    name: `~` never follows the run prefix in one."""
    digest = hashlib.sha1(f"{event_name}\0{date}".encode()).hexdigest()[:16]
    return f"{run_prefix(request_id, run_ts)}~{digest}-{shard}-{n}.part"


def errors_name(request_id: str, run_ts: str, n: int) -> str:
    return f"{ERRORS_DIR}/{request_id}-{run_ts}-errors-{n}.jsonl"


def errors_prefix(request_id: str, run_ts: str) -> str:
    return f"{ERRORS_DIR}/{request_id}-{run_ts}-errors-"


def manifest_name(request_id: str, run_ts: str) -> str:
    return f"{MANIFESTS_DIR}/{request_id}-{run_ts}-manifest.json"


def event_name_budget(request_id: str, database_id: str, ext: str, name_budget: int) -> int:
    """How many UTF-8 bytes an encoded event name may take so that every object name fits `name_budget`."""
    fixed = data_name(request_id, "0" * 14, "", "0" * 8, 10**INDEX_DIGITS_RESERVED - 1, database_id, ext)
    return name_budget - len(fixed.encode("utf-8"))


def encoded_name_bytes(event_name: str) -> int:
    return len(encode_event_name(event_name).encode("utf-8"))
