"""The parse stage alone: `_ParseTask.process` over the first read tasks of the benchmark's data, in this
process, with no pipeline around it. Prints the best CPU time of --repeat passes. Compare two versions of
the code by running it from each checkout, alternately (the machine's speed drifts):

    .venv/bin/python bench/parse_stage.py --format json --tasks 6 --repeat 3

Needs the data `bench/run.py` generates (bench/out/data-1000000-zipf by default).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from pipelines.export import event_name_budget  # noqa: E402
from pipelines.options import InvalidRequest, validate  # noqa: E402
from transforms.series import _ParseTask  # noqa: E402
from transforms.sources import plan_reads  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--format", default="json", choices=["json", "csv", "xml", "parquet"])
    ap.add_argument("--tasks", type=int, default=6, help="the first N read tasks (16 MiB each)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data", default=str(ROOT / "bench" / "out" / "data-1000000-zipf"))
    args = ap.parse_args()
    logging.getLogger("ctexport").setLevel(logging.WARNING)  # no line per task
    argv = [
        "--source", f"{args.data}/events-*.jsonl", "--start", "20261124", "--end", "20261127",
        "--format", args.format, "--request_id", "bench", "--run_timestamp", "20261128000000",
        "--database_id", "W4R-565-5Z4Z", "--output", tempfile.gettempdir(),
    ]  # fmt: skip
    try:
        request, files = validate(PipelineOptions(argv))
    except InvalidRequest as e:
        sys.exit(f"{'; '.join(e.problems)} (generate the data with bench/run.py first, or pass --data)")
    budget = event_name_budget(request)
    tasks = plan_reads(files, request.source_format)[: args.tasks]
    file_order = {f.url: i for i, f in enumerate(files)}
    times = []
    for _ in range(args.repeat):
        spill = tempfile.mkdtemp(prefix="ctexport-parse-stage-")
        try:
            parse = _ParseTask(request, tasks, file_order, budget, spill)
            parse.setup()
            start = time.process_time()
            for k in range(len(tasks)):
                for _ in parse.process(k):
                    pass
            times.append(time.process_time() - start)
        finally:
            shutil.rmtree(spill, ignore_errors=True)
    print(
        f"{os.path.basename(ROOT)} {args.format}, {len(tasks)} tasks: best {min(times):.3f} s CPU "
        f"(all: {', '.join(f'{t:.3f}' for t in times)})"
    )


if __name__ == "__main__":
    main()
