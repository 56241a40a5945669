"""Benchmark harness: our JSON export against the hand-written single-process limit (bench/baseline.py).

    .venv/bin/python bench/run.py [--events 1000000] [--repeat 3] [--workers 1] [--keep] [--zipf]

Generates the input once (cached in bench/out/data-<events>[-zipf]/), then runs the contenders alternately, each
as its own subprocess, measuring wall time, CPU seconds and the peak RSS of the whole process tree. Checks that
every contender wrote the same files, byte for byte, and prints a table (also saved as
bench/out/results-<events>.json). See bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
START, END, RUN_TS, REQ, DB = "20261124", "20261127", "20261128000000", "bench", "W4R-565-5Z4Z"
MAX_FILE_BYTES = 104857600
POLL_S = 0.05
MB = 1024 * 1024
RSS_FLOOR_MB = 2048  # "peak RSS < 2 GB", read as 2 GiB
TIME_FLOOR = 1.5  # ours (one process) at most 1.5 x the limit
# SPEC section 3's name pattern, restated here so the check does not trust the pipeline's own code.
NAME_RE = re.compile(
    r"^(?P<req>[A-Za-z0-9_]+)-(?P<run>\d{14})-(?P<event>[^-/]+)-(?P<date>\d{8})-(?P<idx>\d+)"
    r"-(?P<db>[A-Za-z0-9_-]+)\.(?P<ext>json|csv|xml|parquet)(?:\.gz)?$"
)


@dataclass
class Run:
    wall_s: float
    cpu_s: float  # getrusage(RUSAGE_CHILDREN) delta: the child and every descendant it reaped
    cpu_sampled_s: float  # sum over the tree's processes of utime+stime last seen in /proc (cross-check)
    peak_rss_mb: float  # max over polls of the sum of VmRSS over the process tree
    peak_procs: int  # most processes seen in the tree at once
    maxrss_mb: float  # ru_maxrss from wait4: the largest single process of the tree
    exit: int


@dataclass
class Contender:
    name: str
    argv: list[str]
    runs: list[Run] = field(default_factory=list)


# --- process tree measurement --------------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def _tree(root: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _sample(pid: int) -> tuple[int, float] | None:
    """(VmRSS bytes, utime+stime seconds) of one process, None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    i = status.find(b"VmRSS:")
    if i < 0:
        return None
    rss = int(status[i + 6 : status.index(b"\n", i)].split()[0]) * 1024
    fields = stat[stat.rindex(b")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICK
    return rss, cpu


def measure(argv: list[str], log_path: Path) -> Run:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        peak = peak_procs = 0
        cpu_seen: dict[int, float] = {}
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                wall = time.perf_counter() - t0
                break
            total = n = 0
            for p in _tree(proc.pid):
                s = _sample(p)
                if s is not None:
                    total += s[0]
                    n += 1
                    cpu_seen[p] = s[1]
            peak = max(peak, total)
            peak_procs = max(peak_procs, n)
            time.sleep(POLL_S)
    proc.returncode = os.waitstatus_to_exitcode(status)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(
        wall_s=round(wall, 3),
        cpu_s=round(cpu, 3),
        cpu_sampled_s=round(sum(cpu_seen.values()), 3),
        peak_rss_mb=round(peak / MB, 1),
        peak_procs=peak_procs,
        maxrss_mb=round(usage.ru_maxrss / 1024, 1),
        exit=proc.returncode,
    )


# --- data and contenders -------------------------------------------------------------------------------------


def ensure_data(events: int, zipf: bool) -> Path:
    data = OUT / f"data-{events}{'-zipf' if zipf else ''}"
    if (data / ".complete").exists():
        print(f"data: {data.relative_to(ROOT)} (cached)")
        return data
    tmp = data.with_name(data.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    argv = [sys.executable, "-m", "ctexport.generate", "--out", str(tmp), "--events", str(events)]
    argv += ["--profiles", "0", "--days", "3", "--end", END, "--files", "4", "--bad", "0"]
    argv += ["--zipf"] if zipf else []
    print("data: generating", " ".join(argv[1:]))
    subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    (tmp / ".complete").write_text(" ".join(argv[1:]) + "\n")
    shutil.rmtree(data, ignore_errors=True)
    tmp.rename(data)
    return data


def contenders(data: Path, workers: int) -> list[Contender]:
    source = str(data / "events-*.jsonl")
    py = sys.executable
    common = ["--source", source, "--start", START, "--end", END]
    limit = [py, "bench/baseline.py", *common, "--max_file_bytes", str(MAX_FILE_BYTES), "--format", "json"]
    limit += ["--request_id", REQ, "--run_timestamp", RUN_TS, "--database_id", DB]
    ours = [py, "-m", "pipelines.export", *common, "--format", "json", "--request_id", REQ]
    ours += ["--database_id", DB, "--run_timestamp", RUN_TS, "--max_file_bytes", str(MAX_FILE_BYTES)]
    out = [Contender("limit", limit), Contender("ours-1p", ours)]
    if workers > 1:
        multi = ["--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]
        out.append(Contender(f"ours-{workers}p", ours + multi))
    return out


# --- verification --------------------------------------------------------------------------------------------


def _decode_event(encoded: str) -> str:
    return re.sub(
        r"(?:%[0-9A-Fa-f]{2})+", lambda m: bytes.fromhex(m.group().replace("%", "")).decode(), encoded
    )


def inventory(folder: Path) -> dict[str, dict]:
    """Data files at the top of an output folder: name -> {event, date, records, bytes, sha256}."""
    files = {}
    for path in sorted(folder.iterdir()):
        m = NAME_RE.match(path.name)
        if not path.is_file() or not m:
            continue
        data = path.read_bytes()
        files[path.name] = {
            "event": _decode_event(m["event"]),
            "date": m["date"],
            "records": data.count(b"\n") - 1,  # line 1 is the event name
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    return files


def per_series(files: dict[str, dict]) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for f in files.values():
        key = (f["event"], f["date"])
        counts[key] = counts.get(key, 0) + f["records"]
    return counts


def first_difference(a: Path, b: Path) -> str:
    la, lb = a.read_bytes().split(b"\n"), b.read_bytes().split(b"\n")
    for i, (x, y) in enumerate(zip(la, lb, strict=False)):
        if x != y:
            col = next((j for j, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y)))
            lo = max(0, col - 80)
            return (
                f"line {i + 1}, byte {col}:\n      {a.parent.name}: …{x[lo : col + 160]!r}\n"
                f"      {b.parent.name}: …{y[lo : col + 160]!r}"
            )
    return f"one file is a prefix of the other: {len(la)} vs {len(lb)} lines"


def compare(ref: Path, other: Path) -> tuple[bool, list[str]]:
    """Same files, same bytes? Returns (identical, report lines)."""
    a, b = inventory(ref), inventory(other)
    notes = []
    sa, sb = per_series(a), per_series(b)
    if sa != sb:
        keys = sorted(set(sa) | set(sb))
        diff = [(k, sa.get(k), sb.get(k)) for k in keys if sa.get(k) != sb.get(k)]
        notes.append(f"record counts differ in {len(diff)} of {len(keys)} (event, date) series, e.g.:")
        notes += [f"    {k}: {ref.name} {x}, {other.name} {y}" for k, x, y in diff[:5]]
    missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if missing:
        notes.append(f"{len(missing)} files only in {ref.name}, first: {missing[0]}")
    if extra:
        notes.append(f"{len(extra)} files only in {other.name}, first: {extra[0]}")
    common = sorted(set(a) & set(b))
    differ = [n for n in common if a[n]["sha256"] != b[n]["sha256"]]
    if differ:
        notes.append(f"{len(differ)} of {len(common)} files with the same name differ; first: {differ[0]}")
        notes.append("    " + first_difference(ref / differ[0], other / differ[0]))
    too_big = [n for n, f in b.items() if f["bytes"] > MAX_FILE_BYTES]
    if too_big:
        notes.append(f"{len(too_big)} files of {other.name} exceed --max_file_bytes, first: {too_big[0]}")
    if not a:
        notes.append(f"{ref.name} holds no data file")
    if notes:
        return False, notes
    return True, [f"identical: {len(a)} files, {len(sa)} series, {sum(sa.values()):,} records"]


# --- main ----------------------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem = f"{mem_kb / MB:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    versions = {}
    for pkg in ("apache-beam", "orjson"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg)
        except Exception:
            versions[pkg] = "?"
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **versions,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Benchmark our JSON export against the single-process limit.")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1, help="2 or more adds ours multi-process")
    ap.add_argument("--keep", action="store_true", help="keep the contenders' output folders")
    ap.add_argument("--zipf", action="store_true", help="Zipf-distributed event names (one hot series)")
    args = ap.parse_args(argv)

    OUT.mkdir(parents=True, exist_ok=True)
    facts = machine()
    print(
        f"machine: nproc {facts['nproc']} ({facts['usable_cpus']} usable), {facts['cpu']}, {facts['memory']}; "
        f"Python {facts['python']}, apache-beam {facts['apache-beam']}, orjson {facts['orjson']}"
    )
    data = ensure_data(args.events, args.zipf)
    input_bytes = sum(p.stat().st_size for p in data.glob("events-*.jsonl"))
    print(f"input: {args.events:,} events, {input_bytes / MB:,.0f} MB of JSON Lines in 4 files")
    cs = contenders(data, args.workers)
    logs = OUT / "logs"
    logs.mkdir(exist_ok=True)
    tag = f"{args.events}{'-zipf' if args.zipf else ''}"
    load_before = os.getloadavg()
    for r in range(args.repeat):
        for c in cs:
            outdir = OUT / f"out-{tag}-{c.name}"
            shutil.rmtree(outdir, ignore_errors=True)
            argv_c = c.argv + ["--output", str(outdir)]
            run = measure(argv_c, logs / f"{tag}-{c.name}-{r}.log")
            c.runs.append(run)
            print(
                f"  run {r + 1}/{args.repeat} {c.name:8s} {run.wall_s:7.2f} s wall, {run.cpu_s:7.2f} s CPU, "
                f"peak tree RSS {run.peak_rss_mb:7.0f} MB ({run.peak_procs} procs), "
                f"max single RSS {run.maxrss_mb:6.0f} MB, exit {run.exit}",
                flush=True,
            )
            if run.exit != 0:
                print(f"    FAILED: see {logs / f'{tag}-{c.name}-{r}.log'}")
    load_after = os.getloadavg()

    # verification: every contender against the limit, by name and bytes
    print("verification (JSON, by file name and bytes):")
    ref = OUT / f"out-{tag}-{cs[0].name}"
    verdicts = {}
    for c in cs[1:]:
        ok, notes = compare(ref, OUT / f"out-{tag}-{c.name}")
        verdicts[c.name] = {"identical": ok, "notes": notes}
        print(f"  {c.name} vs {cs[0].name}: " + ("SAME" if ok else "DIFFERENT"))
        for n in notes:
            print(f"    {n}")
    if not args.keep:
        for c in cs:
            shutil.rmtree(OUT / f"out-{tag}-{c.name}", ignore_errors=True)

    rows = []
    limit_best = min(r.wall_s for r in cs[0].runs)
    for c in cs:
        good = [r for r in c.runs if r.exit == 0] or c.runs
        best = min(good, key=lambda r: r.wall_s)
        cpu = min(r.cpu_s for r in good)
        rows.append(
            {
                "contender": c.name,
                "best_wall_s": best.wall_s,
                "events_per_s": round(args.events / best.wall_s),
                "events_per_cpu_s": round(args.events / cpu) if cpu else None,
                "min_cpu_s": cpu,
                "peak_rss_mb": max(r.peak_rss_mb for r in good),
                "max_single_rss_mb": max(r.maxrss_mb for r in good),
                "ratio_time_vs_limit": round(best.wall_s / limit_best, 2),
                "all_exit_0": all(r.exit == 0 for r in c.runs),
            }
        )
    head = f"{'contender':10s} {'best wall s':>11s} {'events/s':>10s} {'ev/CPU-s':>10s} {'peak RSS MB':>11s} {'ratio':>6s}"
    print()
    print(head)
    print("-" * len(head))
    for row in rows:
        print(
            f"{row['contender']:10s} {row['best_wall_s']:11.2f} {row['events_per_s']:10,d} "
            f"{row['events_per_cpu_s'] or 0:10,d} {row['peak_rss_mb']:11,.0f} {row['ratio_time_vs_limit']:6.2f}"
        )
    ours = rows[1]
    time_ok = ours["best_wall_s"] <= TIME_FLOOR * limit_best and ours["all_exit_0"]
    rss_ok = ours["peak_rss_mb"] < RSS_FLOOR_MB
    same = all(v["identical"] for v in verdicts.values())
    floor = time_ok and rss_ok and same
    print(
        f"\nfloor ({ours['contender']}: time <= {TIME_FLOOR} x limit, peak RSS < {RSS_FLOOR_MB} MB, same bytes): "
        f"{'HOLDS' if floor else 'BROKEN'} — time {ours['ratio_time_vs_limit']:.2f} x "
        f"({'ok' if time_ok else 'too slow'}), RSS {ours['peak_rss_mb']:,.0f} MB "
        f"({'ok' if rss_ok else 'too much'}), output {'identical' if same else 'DIFFERENT'}"
    )
    print(
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        f"(other work on the machine skews times; best of {args.repeat} runs is reported)"
    )
    result = {
        "events": args.events,
        "zipf": args.zipf,
        "input_bytes": input_bytes,
        "repeat": args.repeat,
        "machine": facts,
        "load_average_before_after": [load_before, load_after],
        "floor": {"holds": floor, "time_ok": time_ok, "rss_ok": rss_ok, "identical_output": same},
        "table": rows,
        "verification": verdicts,
        "runs": {c.name: {"argv": c.argv[1:], "runs": [asdict(r) for r in c.runs]} for c in cs},
    }
    path = OUT / f"results-{tag}.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"results: {path.relative_to(ROOT)}")
    return 0 if floor else 1


if __name__ == "__main__":
    sys.exit(main())
