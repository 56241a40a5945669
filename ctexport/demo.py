"""`ctexport demo`: a real export, end to end, on an embedded default.

Starts the local GCS emulator, generates sample events and profiles, exports the events in all four formats
(and the profiles as Parquet) to the emulator's bucket through the real GCS API, then lists the objects and
shows the start of each kind.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

BUCKET = "ctexport-demo"
DATABASE_ID = "W4R-565-5Z4Z"


def _show(store, name: str, data: bytes) -> None:
    print(f"\n--- {store.display(name)} ({len(data):,} bytes) ---")
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        print(f"{table.num_rows} rows; schema:")
        print("\n".join("  " + line for line in str(table.schema).splitlines()[:12]))
        for row in table.slice(0, 2).to_pylist():
            print("  " + str(row)[:300])
        return
    if name.endswith(".gz"):
        import gzip

        data = gzip.decompress(data)
    for line in data.decode("utf-8").splitlines()[:4]:
        print("  " + line[:300])


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="ctexport demo", description="Export sample data to a local GCS emulator"
    )
    parser.add_argument("--events", type=int, default=20000, help="sample events to generate (default 20000)")
    parser.add_argument(
        "--profiles", type=int, default=2000, help="sample profiles to generate (default 2000)"
    )
    parser.add_argument(
        "--work", default="demo-out", help="folder for the sample data and the emulator's storage"
    )
    parser.add_argument("--port", type=int, default=0, help="emulator port (default: any free port)")
    args = parser.parse_args(argv)

    from ctexport.emulator import Emulator
    from ctexport.generate import main as generate
    from pipelines.export import run
    from transforms.storage import open_storage

    work = Path(args.work)
    data = work / "data"
    emulator = Emulator(port=args.port or None, root=str(work / "emulator"))
    emulator.start()
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
    try:
        emulator.create_bucket(BUCKET)
        print(f"GCS emulator at {emulator.url}, bucket gs://{BUCKET}\n")
        end = int(time.time()) // 86400 * 86400
        start = end - 3 * 86400
        end_text = time.strftime("%Y%m%d", time.gmtime(end))
        start_text = time.strftime("%Y%m%d", time.gmtime(start))
        generate(
            [
                "--out",
                str(data),
                "--events",
                str(args.events),
                "--profiles",
                str(args.profiles),
                "--end",
                end_text,
            ]
        )
        run_ts = time.strftime("%Y%m%d%H%M%S", time.gmtime())
        common = ["--database_id", DATABASE_ID, "--run_timestamp", run_ts]
        events = str(data / "events-*.jsonl")
        exports = [
            (
                fmt,
                [
                    "--source",
                    events,
                    "--export_type",
                    "events",
                    "--start",
                    start_text,
                    "--end",
                    end_text,
                    "--format",
                    fmt,
                ]
                + (["--compression", "gzip"] if fmt == "csv" else []),
            )
            for fmt in ("json", "csv", "xml", "parquet")
        ]
        exports.append(
            (
                "profiles",
                [
                    "--source",
                    str(data / "profiles-*.jsonl"),
                    "--export_type",
                    "profiles",
                    "--format",
                    "parquet",
                ],
            )
        )
        for label, flags in exports:
            print(f"\n=== export {label} ===", flush=True)
            status = run(
                flags
                + common
                + ["--request_id", f"demo_{label}", "--output", f"gs://{BUCKET}/exports/{label}"]
            )
            if status != 0:
                print(f"export {label} failed with status {status}")
                return status
        store = open_storage(f"gs://{BUCKET}")
        objects = store.list("")
        print(f"\n=== {len(objects)} objects in gs://{BUCKET} ===")
        for o in objects:
            print(f"{o.size:>12,}  {o.name}")
        shown = set()
        for o in objects:
            kind = (
                o.name.split("/")[1],
                o.name.rsplit(".", 1)[-1],
                "_errors" in o.name,
                "_manifests" in o.name,
            )
            if kind in shown:
                continue
            shown.add(kind)
            _show(store, o.name, store.read_bytes(o.name))
        return 0
    finally:
        emulator.stop()
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
