"""Finish a run: write the dead letters, enforce --max_bad_records, delete orphans, write the manifest last.

Runs once, after every data file is written (its inputs are side inputs that hold all files, dead letters and
counts). The manifest's presence means the run is complete (SPEC section 5).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict

import apache_beam as beam
import orjson

from transforms import naming
from transforms.runs import delete_runs
from transforms.series import STAT_KEYS, DeadLetter
from transforms.storage import crc32c_b64, open_storage

log = logging.getLogger("ctexport")
RUN_FAILED = "ctexport run failed"


class RunFailed(RuntimeError):
    """The run cannot count as done (too many bad records); no manifest is written."""


def dead_letter_files(dead: list[DeadLetter], max_bytes: int) -> list[tuple[bytes, int]]:
    """The dead letters in source order as JSON Lines files of at most max_bytes: (content, record count)."""
    files: list[tuple[bytes, int]] = []
    buf: list[bytes] = []
    size = 0
    for d in sorted(dead, key=lambda d: d.order):
        line = orjson.dumps(d.as_json()) + b"\n"
        if len(line) > max_bytes:  # cut the record text until the line fits a file of its own
            body = d.as_json()
            over = len(line) - max_bytes
            text = body["record"].encode("utf-8")[: max(0, len(body["record"].encode("utf-8")) - over - 8)]
            body["record"] = text.decode("utf-8", "ignore")
            body["record_truncated"] = True
            line = orjson.dumps(body) + b"\n"
        if buf and size + len(line) > max_bytes:
            files.append((b"".join(buf), len(buf)))
            buf, size = [], 0
        buf.append(line)
        size += len(line)
    if buf:
        files.append((b"".join(buf), len(buf)))
    return files


def finalize_run(
    request,
    source_files: list[dict],
    files: list[dict],
    dead: list[DeadLetter],
    stats: list[dict],
    store,
    tasks: int,
) -> dict:
    """Write dead letters and the manifest; return the manifest. Raises RunFailed over --max_bad_records, and
    when the counts do not add up: `tasks` read tasks each reporting once, and every record read exported,
    dead-lettered, outside the window or an older profile version, once."""
    req, run = request.request_id, request.run_ts
    totals = dict.fromkeys(STAT_KEYS, 0)
    for s in stats:
        for k in STAT_KEYS:
            totals[k] += s.get(k, 0)
    exported = sum(f["records"] for f in files)
    accounted = exported + len(dead) + totals["out_of_scope"] + totals["superseded"]
    if totals["tasks"] != tasks or accounted != totals["read"]:
        # Never expected: a lost or repeated piece of work. The files stay unlisted, no manifest.
        raise RunFailed(
            f"{RUN_FAILED}: the counts do not add up: {totals['tasks']} of {tasks} read tasks reported, "
            f"{totals['read']:,} records read, "
            f"{exported:,} exported + {len(dead):,} bad + {totals['out_of_scope']:,} outside + "
            f"{totals['superseded']:,} older versions"
        )

    errors = []
    for n, (content, count) in enumerate(dead_letter_files(dead, request.max_file_bytes)):
        name = naming.errors_name(req, run, n)
        store.write_bytes(name, content)
        errors.append({"name": name, "bytes": len(content), "records": count, "crc32c": crc32c_b64(content)})

    bad = len(dead)
    if request.max_bad_records is not None and bad > request.max_bad_records:
        raise RunFailed(
            f"{RUN_FAILED}: {bad} bad records, more than --max_bad_records {request.max_bad_records}; "
            f"see {store.display(naming.errors_prefix(req, run))}*"
        )

    files = sorted(files, key=lambda f: (f["event"], f["date"], f["index"]))
    store.discard_temporaries()  # what an attempt killed mid-write left half-written
    keep = {f["name"] for f in files} | {e["name"] for e in errors}
    orphans = [
        o.name
        for prefix in (naming.run_prefix(req, run), naming.errors_prefix(req, run))
        for o in store.list(prefix, checksums=False)
        if o.name not in keep and "/" not in o.name[len(prefix) :]
    ]
    for name in orphans:
        store.delete(name)
    if orphans:
        log.info("deleted %d objects left by an earlier attempt of this run", len(orphans))

    per_event: dict[str, dict[str, int]] = defaultdict(dict)
    for f in files:
        day = per_event[f["event"]]
        day[f["date"]] = day.get(f["date"], 0) + f["records"]
    reasons = Counter(d.reason for d in dead)
    manifest = {
        "request_id": req,
        "run_timestamp": run,
        "status": "Done",
        "request": request.as_manifest(),
        "window": request.window.as_dict(),
        "sources": source_files,
        "files": [{k: f[k] for k in ("name", "event", "date", "bytes", "records", "crc32c")} for f in files],
        "errors": errors,
        "totals": {
            "records_read": totals["read"],
            "exported": exported,
            "bad": bad,
            "unplaced": sum(d.unplaced for d in dead),
            "out_of_scope": totals["out_of_scope"],
            "superseded_profile_versions": totals["superseded"],
            "files": len(files),
            "bytes": sum(f["bytes"] for f in files),
        },
        "records_per_event_and_date": {e: dict(sorted(d.items())) for e, d in sorted(per_event.items())},
        "bad_records_by_reason": dict(sorted(reasons.items())),
        "xml_replaced_chars": totals["xml_replaced"] + sum(f.get("xml_replaced_chars", 0) for f in files),
    }
    store.write_bytes(
        naming.manifest_name(req, run), orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"
    )
    return manifest


class _Finalize(beam.DoFn):
    def __init__(self, request, source_files: list[dict], spill: str, tasks: int):
        self._request = request
        self._source_files = source_files
        self._spill = spill
        self._tasks = tasks

    def process(self, _, files, dead, stats):
        r = self._request
        store = open_storage(r.output, tmp_group=naming.run_prefix(r.request_id, r.run_ts))
        try:
            yield finalize_run(
                self._request, self._source_files, list(files), list(dead), list(stats), store, self._tasks
            )
        finally:
            delete_runs(self._spill)


class Finalize(beam.PTransform):
    """Once every file is written: dead letters, orphans, manifest. Outputs the manifest (one dict).
    `tasks`: how many read tasks the run has, each of which reports its counts once."""

    def __init__(self, request, source_files: list[dict], spill: str, tasks: int):
        super().__init__()
        self._request = request
        self._source_files = source_files
        self._spill = spill
        self._tasks = tasks

    def expand(self, pcolls):
        files, dead, stats = pcolls
        p = files.pipeline
        return (
            p
            | "Once" >> beam.Create([None])
            | "WriteManifest"
            >> beam.ParDo(
                _Finalize(self._request, self._source_files, self._spill, self._tasks),
                beam.pvalue.AsList(files),
                beam.pvalue.AsList(dead),
                beam.pvalue.AsList(stats),
            )
        )
