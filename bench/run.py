"""Benchmark harness: our export against the hand-written limit and Beam's built-in writers, per format.

    .venv/bin/python bench/run.py [--events 1000000] [--repeat 3] [--formats json,csv,xml,parquet]
        [--contenders limit,builtin,builtin-2p,ours-1p,ours-2p] [--hot 0.6 | --uniform] [--scaling] [--keep]

Generates the input once (cached in bench/out/data-<events>[-zipf|-hot<F>]/), then, for each format, runs the
contenders alternately, each as its own subprocess, measuring wall time, CPU seconds and the peak RSS of the
whole process tree. Checks record counts per (event, date) across contenders, bytes for JSON (limit vs ours)
and bytes of ours in one vs two processes for every format, prints a table per format with the targets of
the performance issue, and saves bench/out/results-<tag>.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import platform
import re
import resource
import shutil
import signal
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
FORMATS = ("json", "csv", "xml", "parquet")
CONTENDERS = ("limit", "builtin", "builtin-2p", "ours-1p", "ours-2p")
DEFAULT_CONTENDERS = ("limit", "builtin", "ours-1p", "ours-2p")
SIZES = (100_000, 1_000_000, 5_000_000)


def event_count(text: str) -> int:
    """An event count as written on the command line: 250000, 100k or 5M."""
    text = text.strip()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    return int(text[:-1] if scale > 1 else text) * scale


# Targets of the performance issue. "GB" is read as GiB.
T_LIMIT_1P = 0.8  # ours 1p >= 0.8 x limit speed, every format
T_LIMIT_2P = 1.2  # ours 2p >= 1.2 x limit speed (at 1M)
T_SPEEDUP_2P = 1.5  # ours 2p >= 1.5 x ours 1p (at 5M)
T_BUILTIN = 3.0  # ours / beam built-in >= 3, every format
T_RSS_1M, T_RSS_5M = 1024, 1536  # peak RSS of all processes, MiB: at 1M, at 5M
# SPEC section 3's name pattern, restated here so the check does not trust the pipeline's own code.
NAME_RE = re.compile(
    r"^(?P<req>[A-Za-z0-9_]+)-(?P<run>\d{14})-(?P<event>[^-/]+)-(?P<date>\d{8})-(?P<idx>\d+)"
    r"-(?P<db>[A-Za-z0-9_-]+)\.(?P<ext>json|csv|xml|parquet)(?:\.gz)?$"
)
# bench/builtin.py's text files: <encoded event>-<yyyymmdd>-<i>-of-<n>.<ext>
BUILTIN_RE = re.compile(
    r"^(?P<event>[^-/]+)-(?P<date>\d{8})-(?P<idx>\d+)-of-(?P<n>\d+)\.(?P<ext>json|csv|xml)$"
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
    load_avg_1min: float  # at the start of the run
    timed_out: bool = False


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


def measure(argv: list[str], log_path: Path, timeout: float | None = None) -> Run:
    """Run argv from the repository root; poll its process tree until it exits (killed after `timeout` s)."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    timed_out = False
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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
            if timeout and not timed_out and time.perf_counter() - t0 > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)  # the child's own process group (its session)
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
        load_avg_1min=round(load, 2),
        timed_out=timed_out,
    )


# --- data and contenders -------------------------------------------------------------------------------------


def dist_tag(dist: str, hot: float | None) -> str:
    """The data's name suffix: '' (uniform, the old cache name), '-zipf', '-hot0.6'."""
    return f"-hot{hot:g}" if dist == "hot" else "-zipf" if dist == "zipf" else ""


def ensure_data(events: int, dist: str, hot: float | None) -> Path:
    data = OUT / f"data-{events}{dist_tag(dist, hot)}"
    if (data / ".complete").exists():
        print(f"data: {data.relative_to(ROOT)} (cached)")
        return data
    tmp = data.with_name(data.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    argv = [sys.executable, "-m", "ctexport.generate", "--out", str(tmp), "--events", str(events)]
    argv += ["--profiles", "0", "--days", "3", "--end", END, "--files", "4", "--bad", "0"]
    argv += ["--hot", str(hot)] if dist == "hot" else ["--zipf"] if dist == "zipf" else []
    print("data: generating", " ".join(argv[1:]), flush=True)
    t = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    (tmp / ".complete").write_text(" ".join(argv[1:]) + "\n")
    shutil.rmtree(data, ignore_errors=True)
    tmp.rename(data)
    print(f"data: generated in {time.perf_counter() - t:.0f} s")
    return data


def contenders(data: Path, fmt: str, names: list[str], workers: int) -> list[Contender]:
    source = str(data / "events-*.jsonl")
    py = sys.executable
    common = ["--source", source, "--start", START, "--end", END, "--format", fmt]
    ids = ["--request_id", REQ, "--run_timestamp", RUN_TS, "--database_id", DB]
    argv = {
        "limit": [py, "bench/baseline.py", *common, *ids, "--max_file_bytes", str(MAX_FILE_BYTES)],
        "builtin": [py, "bench/builtin.py", *common, *ids],
        "ours-1p": [py, "-m", "pipelines.export", *common, *ids, "--max_file_bytes", str(MAX_FILE_BYTES)],
    }
    multi = ["--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]
    argv["ours-2p"] = argv["ours-1p"] + multi
    argv["builtin-2p"] = argv["builtin"] + multi
    return [Contender(n, argv[n]) for n in names]


# --- verification --------------------------------------------------------------------------------------------


def _decode_event(encoded: str) -> str:
    return re.sub(
        r"(?:%[0-9A-Fa-f]{2})+", lambda m: bytes.fromhex(m.group().replace("%", "")).decode(), encoded
    )


def _text_records(data: bytes, fmt: str) -> int:
    if fmt == "json":
        return data.count(b"\n") - 1  # line 1 is the event name
    if fmt == "xml":
        return data.count(b"<Event>")  # "<" is escaped in text, so this is the element
    return sum(1 for _ in csv.reader(io.StringIO(data.decode(), newline=""))) - 1  # less the header row


def _parquet_records(path: Path) -> dict[tuple[str, str], int]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["eventName", "ts"])
    dates = pc.strftime(t["ts"], format="%Y%m%d")
    g = t.append_column("date", dates).group_by(["eventName", "date"]).aggregate([([], "count_all")])
    cols = [g[c].to_pylist() for c in ("eventName", "date", "count_all")]
    return {(e, d): n for e, d, n in zip(*cols, strict=True)}


def inventory(folder: Path, fmt: str) -> tuple[dict[str, dict], dict[tuple[str, str], int]]:
    """Data files at the top of an output folder: name -> {bytes, sha256}, and records per (event, date).

    Text files named per SPEC section 3 or as bench/builtin.py names them; Parquet records are counted by
    their eventName and ts columns (the built-in contender's files hold every event).
    """
    files: dict[str, dict] = {}
    counts: dict[tuple[str, str], int] = {}
    if not folder.is_dir():
        return files, counts
    for path in sorted(folder.iterdir()):
        m = NAME_RE.match(path.name) or BUILTIN_RE.match(path.name)
        if not path.is_file() or not (m or (fmt == "parquet" and path.suffix == ".parquet")):
            continue
        data = path.read_bytes()
        files[path.name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        if fmt == "parquet":
            per = _parquet_records(path)
        else:
            per = {(_decode_event(m["event"]), m["date"]): _text_records(data, fmt)}
        for k, n in per.items():
            counts[k] = counts.get(k, 0) + n
    return files, counts


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


def compare_counts(ref: str, a: dict, name: str, b: dict) -> list[str]:
    if a == b:
        return []
    keys = sorted(set(a) | set(b))
    diff = [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]
    notes = [f"record counts differ in {len(diff)} of {len(keys)} (event, date) series, e.g.:"]
    return notes + [f"    {k}: {ref} {x}, {name} {y}" for k, x, y in diff[:5]]


def compare_bytes(ref: Path, a: dict, other: Path, b: dict) -> list[str]:
    """Same file names, same bytes? Returns the differences (none: identical)."""
    notes = []
    missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if missing:
        notes.append(f"{len(missing)} files only in {ref.name}, first: {missing[0]}")
    if extra:
        notes.append(f"{len(extra)} files only in {other.name}, first: {extra[0]}")
    common = sorted(set(a) & set(b))
    differ = [n for n in common if a[n]["sha256"] != b[n]["sha256"]]
    if differ:
        notes.append(f"{len(differ)} of {len(common)} files with the same name differ; first: {differ[0]}")
        if not differ[0].endswith(".parquet"):
            notes.append("    " + first_difference(ref / differ[0], other / differ[0]))
    if not a:
        notes.append(f"{ref.name} holds no data file")
    return notes


def verify(fmt: str, folders: dict[str, Path]) -> dict:
    """Counts per (event, date) of every contender against the first; bytes where they must be equal."""
    inv = {c: inventory(p, fmt) for c, p in folders.items()}
    names = list(folders)
    ref = names[0]
    out: dict = {"counts": {}, "bytes": {}, "too_large": {}, "summary": {}}
    for c in names:
        files, counts = inv[c]
        out["summary"][c] = {"files": len(files), "series": len(counts), "records": sum(counts.values())}
        if c != ref:
            out["counts"][f"{c} vs {ref}"] = compare_counts(ref, inv[ref][1], c, counts)
        if c.startswith("ours") or c == "limit":
            big = [n for n, f in files.items() if f["bytes"] > MAX_FILE_BYTES]
            out["too_large"][c] = big[:3]
    pairs = [("ours-1p", "ours-2p")]
    if fmt == "json":
        pairs = [("limit", "ours-1p"), ("limit", "ours-2p")] + pairs
    for a, b in pairs:
        if a in inv and b in inv:
            out["bytes"][f"{b} vs {a}"] = compare_bytes(folders[a], inv[a][0], folders[b], inv[b][0])
    return out


# --- tables and targets --------------------------------------------------------------------------------------


def summarise(c: Contender, events: int) -> dict:
    good = [r for r in c.runs if r.exit == 0] or c.runs
    best = min(good, key=lambda r: r.wall_s)
    cpu = min(r.cpu_s for r in good)
    return {
        "contender": c.name,
        "best_wall_s": best.wall_s,
        "events_per_s": round(events / best.wall_s),
        "events_per_cpu_s": round(events / cpu) if cpu else None,
        "min_cpu_s": cpu,
        "peak_rss_mb": max(r.peak_rss_mb for r in good),
        "max_single_rss_mb": max(r.maxrss_mb for r in good),
        "all_exit_0": all(r.exit == 0 for r in c.runs),
        "timed_out": any(r.timed_out for r in c.runs),
    }


def targets(rows: dict[str, dict], events: int, check: dict) -> list[dict]:
    """The issue's targets that this run can judge. `applies` False: shown for information only."""
    out = []

    def speed(name: str) -> float | None:
        r = rows.get(name)
        return r["events_per_s"] if r and r["all_exit_0"] else None

    def add(what: str, value, ok: bool | None, applies: bool = True) -> None:
        out.append({"target": what, "value": value, "pass": ok, "applies": applies})

    lim, bi, one, two = speed("limit"), speed("builtin"), speed("ours-1p"), speed("ours-2p")
    if lim and "ours-1p" in rows:
        v = round(one / lim, 2) if one else None
        add(f"ours-1p >= {T_LIMIT_1P} x limit", v, bool(v and v >= T_LIMIT_1P))
    if lim and "ours-2p" in rows:
        v = round(two / lim, 2) if two else None
        add(f"ours-2p >= {T_LIMIT_2P} x limit (at 1M)", v, bool(v and v >= T_LIMIT_2P), events >= 1_000_000)
    if "ours-1p" in rows and "ours-2p" in rows:
        v = round(two / one, 2) if one and two else None
        add(
            f"ours-2p >= {T_SPEEDUP_2P} x ours-1p (at 5M)",
            v,
            bool(v and v >= T_SPEEDUP_2P),
            events >= 5_000_000,
        )
    if bi and "ours-1p" in rows:
        v = round(one / bi, 2) if one else None
        add(f"ours-1p >= {T_BUILTIN} x builtin", v, bool(v and v >= T_BUILTIN))

    # Each at its best on this machine: the faster of one and two processes, for ours and for Beam's writers,
    # counting only runs that wrote every record (builtin-2p wrote ~97% of the CSV rows here).
    def complete(name: str) -> float | None:
        lost = any(notes for what, notes in check["counts"].items() if what.startswith(f"{name} vs "))
        return None if lost else speed(name)

    ours_best = max(filter(None, (complete("ours-1p"), complete("ours-2p"))), default=None)
    builtin_best = max(filter(None, (complete("builtin"), complete("builtin-2p"))), default=None)
    if "builtin-2p" in rows and ours_best and builtin_best:
        v = round(ours_best / builtin_best, 2)
        add(f"ours (best of 1p, 2p) >= {T_BUILTIN} x builtin (best of 1p, 2p)", v, v >= T_BUILTIN)
    cap = T_RSS_1M if events <= 1_000_000 else T_RSS_5M
    for name in ("ours-1p", "ours-2p"):
        if name in rows:
            v = rows[name]["peak_rss_mb"]
            add(f"{name} peak RSS (all processes) <= {cap} MiB", round(v), v <= cap)
    for what, notes in check["bytes"].items():
        add(f"bytes identical: {what}", "same" if not notes else "DIFFERENT", not notes)
    for what, notes in check["counts"].items():
        add(f"records per (event, date): {what}", "same" if not notes else "DIFFERENT", not notes)
    for name, big in check["too_large"].items():
        if big:
            add(f"{name}: files <= --max_file_bytes", f"{len(big)}+ too large", False)
    return out


def _ratio(a: float, b: float | None) -> str:
    return f"{a / b:.2f}" if b else "-"


def print_table(fmt: str, events: int, label: str, rows: dict[str, dict], tgs: list[dict]) -> None:
    lim = rows.get("limit", {}).get("events_per_s")
    bi = rows.get("builtin", {}).get("events_per_s")
    head = (
        f"{'contender':10s} {'wall s':>8s} {'events/s':>9s} {'ev/CPU-s':>9s} {'CPU s':>7s} {'peak RSS MB':>11s}"
        f" {'procs':>5s} {'÷limit':>6s} {'÷builtin':>8s}"
    )
    print(f"\n== {fmt} — {events:,} events ({label}) ==")
    print(head)
    print("-" * len(head))
    for r in rows.values():
        flag = "" if r["all_exit_0"] else ("  TIMED OUT" if r["timed_out"] else "  FAILED")
        print(
            f"{r['contender']:10s} {r['best_wall_s']:8.2f} {r['events_per_s']:9,d} {r['events_per_cpu_s'] or 0:9,d}"
            f" {r['min_cpu_s']:7.1f} {r['peak_rss_mb']:11,.0f} {r['peak_procs']:5d}"
            f" {_ratio(r['events_per_s'], lim):>6s} {_ratio(r['events_per_s'], bi):>8s}{flag}"
        )
    for t in tgs:
        verdict = ("PASS" if t["pass"] else "FAIL") if t["applies"] else "info"
        print(f"  [{verdict}] {t['target']}: {t['value']}")


# --- one benchmark: a data set, some formats, some contenders ------------------------------------------------


def bench(args: argparse.Namespace, events: int, names: list[str], label: str) -> dict:
    data = ensure_data(events, args.dist, args.hot)
    input_bytes = sum(p.stat().st_size for p in data.glob("events-*.jsonl"))
    print(
        f"input: {events:,} events ({label}), {input_bytes / MB:,.0f} MB of JSON Lines in 4 files", flush=True
    )
    tag = f"{events}{dist_tag(args.dist, args.hot)}"
    logs = OUT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    result: dict = {"events": events, "data": label, "input_bytes": input_bytes, "formats": {}}
    for fmt in args.formats:
        cs = contenders(data, fmt, names, args.workers)
        folders = {c.name: OUT / f"out-{tag}-{fmt}-{c.name}" for c in cs}
        load_before = os.getloadavg()
        for r in range(args.repeat):
            for c in cs:
                shutil.rmtree(folders[c.name], ignore_errors=True)
                log = logs / f"{tag}-{fmt}-{c.name}-{r}.log"
                run = measure(c.argv + ["--output", str(folders[c.name])], log, args.timeout)
                c.runs.append(run)
                print(
                    f"  {fmt:7s} run {r + 1}/{args.repeat} {c.name:8s} {run.wall_s:7.2f} s wall, "
                    f"{run.cpu_s:7.2f} s CPU, peak tree RSS {run.peak_rss_mb:6.0f} MB ({run.peak_procs} procs), "
                    f"load {run.load_avg_1min:.1f}, exit {run.exit}"
                    + (" TIMED OUT" if run.timed_out else ""),
                    flush=True,
                )
                if run.exit != 0:
                    print(f"    FAILED: see {log.relative_to(ROOT)}")
        load_after = os.getloadavg()
        check = verify(fmt, folders)
        if not args.keep:
            for p in folders.values():
                shutil.rmtree(p, ignore_errors=True)
        rows = {c.name: summarise(c, events) for c in cs}
        for c in cs:
            rows[c.name]["peak_procs"] = max(r.peak_procs for r in c.runs)
        tgs = targets(rows, events, check)
        print_table(fmt, events, label, rows, tgs)
        for c, s in check["summary"].items():
            print(f"  output {c}: {s['files']} files, {s['series']} series, {s['records']:,} records")
        for group in ("counts", "bytes"):
            for what, notes in check[group].items():
                for n in notes:
                    print(f"    {what}: {n}")
        print(f"  load average before {load_before[0]:.2f}, after {load_after[0]:.2f}", flush=True)
        result["formats"][fmt] = {
            "load_average_before_after": [load_before, load_after],
            "table": list(rows.values()),
            "targets": tgs,
            "verification": check,
            "runs": {c.name: {"argv": c.argv[1:], "runs": [asdict(r) for r in c.runs]} for c in cs},
        }
    return result


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
    from importlib.metadata import version

    versions = {}
    for pkg in ("apache-beam", "orjson", "pyarrow"):
        try:
            versions[pkg] = version(pkg)
        except Exception:
            versions[pkg] = "?"
    try:  # read-only; the working tree may hold uncommitted pipeline changes
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    return {
        "git_head": commit,
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **versions,
    }


def _list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise SystemExit(f"--{what}: expected a comma-separated subset of {','.join(allowed)}, got {text!r}")
    return items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Benchmark our export against the limit and Beam's built-in writers."
    )
    ap.add_argument("--events", type=event_count, default=1_000_000, help="e.g. 1000000 or 1M")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the best of them is reported")
    ap.add_argument("--formats", default=",".join(FORMATS), help="default: json,csv,xml,parquet")
    ap.add_argument(
        "--contenders",
        default=None,
        help=f"default: {','.join(DEFAULT_CONTENDERS)}; also builtin-2p (Beam's writers in --workers processes)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes of the ours-2p and builtin-2p contenders (default 2)",
    )
    names = ap.add_mutually_exclusive_group()
    names.add_argument("--zipf", action="store_true", help="Zipf-distributed event names (the default)")
    names.add_argument("--uniform", action="store_true", help="uniform event names")
    names.add_argument("--hot", type=float, metavar="FRACTION", help='this share of events is "App Launched"')
    ap.add_argument("--scaling", action="store_true", help="limit, ours-1p and ours-2p at each of --sizes")
    ap.add_argument(
        "--sizes",
        default=",".join(map(str, SIZES)),
        help="for --scaling: counts such as 100k,1M,5M (the default)",
    )
    ap.add_argument("--timeout", type=float, default=3600, help="kill a run after this many seconds")
    ap.add_argument("--keep", action="store_true", help="keep the contenders' output folders")
    args = ap.parse_args(argv)
    args.formats = _list(args.formats, FORMATS, "formats")
    args.dist = "hot" if args.hot is not None else "uniform" if args.uniform else "zipf"
    if args.hot is not None and not 0 <= args.hot <= 1:
        raise SystemExit("--hot: a share between 0 and 1")
    default = ("limit", "ours-1p", "ours-2p") if args.scaling else DEFAULT_CONTENDERS
    names_ = _list(args.contenders or ",".join(default), CONTENDERS, "contenders")
    if args.dist == "hot":
        label = f'hot: {args.hot:g} "App Launched"'
    else:
        label = "Zipf names" if args.dist == "zipf" else "uniform names"

    OUT.mkdir(parents=True, exist_ok=True)
    facts = machine()
    print(
        f"machine: nproc {facts['nproc']} ({facts['usable_cpus']} usable), {facts['cpu']}, {facts['memory']}; "
        f"Python {facts['python']}, apache-beam {facts['apache-beam']}, orjson {facts['orjson']}, "
        f"pyarrow {facts['pyarrow']}; load average {os.getloadavg()[0]:.2f}"
    )
    sizes = [event_count(x) for x in args.sizes.split(",")] if args.scaling else [args.events]
    results = [bench(args, n, names_, label) for n in sizes]

    if args.scaling:
        print(f"\n== scaling ({label}): events/s wall (peak RSS MB) ==")
        for fmt in args.formats:
            head = f"{fmt:8s} {'events':>10s}" + "".join(f" {c:>18s}" for c in names_) + f" {'2p/1p':>6s}"
            print(head)
            for res in results:
                rows = {r["contender"]: r for r in res["formats"][fmt]["table"]}
                cells = "".join(
                    f" {rows[c]['events_per_s']:>9,d} ({rows[c]['peak_rss_mb']:>5,.0f})" for c in names_
                )
                one, two = rows.get("ours-1p"), rows.get("ours-2p")
                ratio = f"{two['events_per_s'] / one['events_per_s']:6.2f}" if one and two else ""
                print(f"{'':8s} {res['events']:>10,d}{cells} {ratio}")

    applying = [t for res in results for f in res["formats"].values() for t in f["targets"] if t["applies"]]
    failed = [t for t in applying if not t["pass"]]
    print(
        f"\ntargets: {len(applying) - len(failed)} of {len(applying)} pass; load average now {os.getloadavg()[0]:.2f}"
    )
    tag = f"{'scaling' if args.scaling else args.events}{dist_tag(args.dist, args.hot)}"
    if args.formats != list(FORMATS):
        tag += "-" + "-".join(args.formats)
    out = {
        "argv": sys.argv[1:] if argv is None else argv,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "repeat": args.repeat,
        "machine": facts,
        "results": results,
    }
    path = OUT / f"results-{tag}.json"
    path.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(f"results: {path.relative_to(ROOT)}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
