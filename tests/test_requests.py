"""Export requests, runs and the Activity Log: `ctexport create`, `activity`, `show`, `stop`, `tick` and
`scheduler`, against a local state folder and against the GCS emulator, with real exports of tiny data.

Every command gets a fixed clock (`--now`), so nothing here depends on the wall clock.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from ctexport import generate, requests_cli, runs, state
from transforms import naming, storage
from transforms.windows import parse_run_timestamp, parse_time

DB = "W4R-565-5Z4Z"
START = parse_time("20261125000000")
END = parse_time("20261127000000")
ID_RE = re.compile(r"^[A-Za-z0-9_]+$")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """300 events over two days (plus 3 bad lines) and 60 profile versions."""
    folder = tmp_path_factory.mktemp("data")
    generate.write_jsonl(
        folder / "events-0.jsonl", generate.generate_events(300, seed=5, start_ts=START, end_ts=END, bad=3)
    )
    generate.write_jsonl(
        folder / "profiles-0.jsonl", generate.generate_profiles(60, seed=5, start_ts=START, end_ts=END)
    )
    return folder


def good_events(folder: Path) -> list[dict]:
    out = []
    for line in (folder / "events-0.jsonl").read_bytes().splitlines():
        rec = generate._parse(line)
        if rec is not None and generate.good_event(rec):
            out.append(rec)
    return out


@pytest.fixture(params=["local", "gcs"])
def where(request, tmp_path) -> dict:
    """State and output locations: both in local folders, or both on the emulator."""
    if request.param == "local":
        return {
            "state": str(tmp_path / "state"),
            "out": str(tmp_path / "out"),
            "out2": str(tmp_path / "out2"),
        }
    bucket = request.getfixturevalue("gcs_bucket")
    return {"state": f"gs://{bucket}/state", "out": f"gs://{bucket}/out", "out2": f"gs://{bucket}/out2"}


def cli(capsys, main, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def create(capsys, where, data, *argv: str, now: str = "20261127120000", source: str = "events-*") -> tuple:
    flags = ["--state", where["state"], "--now", now, "--database-id", DB]
    if "--source" not in argv:
        flags += ["--source", str(data / source)]
    if "--output" not in argv and "--destination" not in argv:
        flags += ["--output", where["out"]]
    status, out, err = cli(capsys, requests_cli.create_main, *argv, *flags)
    request_id = out.splitlines()[-1] if out.strip() else None
    return status, request_id, out, err


def activity(capsys, where) -> list[dict]:
    status, out, err = cli(capsys, requests_cli.activity_main, "--state", where["state"], "--json")
    assert status == 0, err
    return json.loads(out)


def show(capsys, where, request_id: str) -> dict:
    status, out, err = cli(capsys, requests_cli.show_main, request_id, "--state", where["state"], "--json")
    assert status == 0, err
    return json.loads(out)


def tick(capsys, where, now: str, *extra: str) -> tuple[int, str, str]:
    return cli(capsys, requests_cli.tick_main, "--state", where["state"], "--now", now, *extra)


def manifest(output: str, request_id: str, run_ts: str) -> dict | None:
    store = storage.open_storage(output)
    name = naming.manifest_name(request_id, run_ts)
    return json.loads(store.read_bytes(name)) if store.exists(name) else None


def fake_manifest(req: dict, run_ts: str, records: int = 0) -> None:
    """What a completed run leaves: the manifest (for runners that stand in for the pipeline)."""
    body = {"files": [], "errors": [], "totals": {"files": 0, "exported": records, "bad": 0, "bytes": 0}}
    storage.open_storage(req["output"]).write_bytes(
        naming.manifest_name(req["request_id"], run_ts), json.dumps(body).encode()
    )


# ---- one-time requests --------------------------------------------------------------------------------------


def test_one_time_request_runs_at_once_and_shows_in_the_log(capsys, where, data):
    status, request_id, out, err = create(
        capsys,
        where,
        data,
        "--type",
        "select-events",
        "--events",
        "Charged,App Launched",
        "--days",
        "3",
        "--format",
        "csv",
    )
    assert status == 0, err
    assert ID_RE.match(request_id) and request_id.startswith("1795780800_")
    m = manifest(where["out"], request_id, "20261127120000")
    assert m is not None and m["window"] == {
        "field": "ts",
        "start": "2026-11-24T12:00:00Z",
        "end": "2026-11-27T12:00:00Z",
    }
    want = Counter(r["eventName"] for r in good_events(data) if r["eventName"] in ("Charged", "App Launched"))
    assert m["totals"]["exported"] == sum(want.values()) > 0

    [row] = activity(capsys, where)
    assert row["request_id"] == request_id and row["status"] == "Done"
    assert (row["type"], row["frequency"], row["format"]) == ("select-events", "once", "csv")
    assert row["files"] == m["totals"]["files"] and row["records"] == m["totals"]["exported"]
    assert row["last_window"]["start"] == "2026-11-24T12:00:00Z"

    shown = show(capsys, where, request_id)
    assert shown["status"] == "Done" and shown["request"]["events"] == ["Charged", "App Launched"]
    [run] = shown["runs"]
    assert run["run_timestamp"] == "20261127120000" and run["status"] == "Done"
    assert run["files"] == [f["name"] for f in m["files"]] and run["records"] == m["totals"]["exported"]
    assert [a["status"] for a in run["attempts"]] == ["Done"] and run["owner"] is None

    status, out, err = cli(capsys, requests_cli.activity_main, "--state", where["state"])
    header, line = out.splitlines()
    assert header.split() == [
        "REQUEST",
        "ID",
        "CREATED",
        "TYPE",
        "FREQUENCY",
        "FORMAT",
        "STATUS",
        "LAST",
        "WINDOW",
        "FILES",
        "RECORDS",
    ]
    assert line.startswith(request_id) and " Done " in line and f"{m['totals']['exported']:,}" in line
    status, out, err = cli(capsys, requests_cli.show_main, request_id, "--state", where["state"])
    assert "status      Done" in out and "20261127120000  Done" in out and m["files"][0]["name"] in out


def test_one_time_profiles(capsys, where, data):
    status, request_id, out, err = create(
        capsys, where, data, "--type", "profiles", "--format", "json", source="profiles-*"
    )
    assert status == 0, err
    m = manifest(where["out"], request_id, "20261127120000")
    assert m["window"] == {"field": None, "start": None, "end": None} and m["totals"]["exported"] > 0
    assert show(capsys, where, request_id)["runs"][0]["records"] == m["totals"]["exported"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--days", "46"], "--days 46 is out of range: a one-time export covers 1 to 45 days"),
        (["--start", "20261001"], "--start reaches more than 45 days before the run"),
        (["--type", "select-events", "--days", "1"], "--type select-events needs --events"),
        (["--events", "Charged", "--days", "1"], "use --type select-events"),
        (["--frequency", "recurring"], "--every-hours is required for a recurring export"),
        (["--frequency", "recurring", "--every-hours", "4", "--days", "2"], "--days is for one-time exports"),
        (["--type", "profiles", "--days", "2"], "--days does not apply to profiles"),
        (["--days", "2", "--source", "/nonexistent/*.jsonl"], "matches no file"),
        (["--days", "2", "--timezone", "Mars/Olympus"], "--timezone 'Mars/Olympus' is not an IANA time zone"),
    ],
)
def test_invalid_request_is_refused_and_not_recorded(capsys, tmp_path, data, argv, message):
    where = {"state": str(tmp_path / "state"), "out": str(tmp_path / "out")}
    status, _, out, err = create(capsys, where, data, *argv)
    assert status == 2
    assert err.startswith("ctexport: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "state").exists() and not (tmp_path / "out").exists()


def test_usage_errors(capsys, tmp_path):
    st = str(tmp_path / "state")
    assert requests_cli.create_main(["--every-hours", "5", "--state", st]) == 2
    assert requests_cli.show_main(["nope", "--state", st]) == 2
    assert requests_cli.stop_main(["nope", "--state", st]) == 2
    assert "no request 'nope'" in capsys.readouterr().err


# ---- recurring requests, tick, stop -------------------------------------------------------------------------


def captured_in(records: list[dict], start: int, end: int) -> int:
    return sum(1 for r in records if start <= r.get("capturedAt", r["ts"]) < end)


def test_tick_catches_up_three_missed_windows_each_once(capsys, where, data):
    status, request_id, out, err = create(
        capsys, where, data, "--frequency", "recurring", "--every-hours", "4", now="20261125083000"
    )
    assert status == 0, err
    assert "first window capturedAt in [2026-11-25 08:00, 2026-11-25 12:00)" in out
    assert activity(capsys, where)[0]["status"] == "Pending"

    status, out, err = tick(capsys, where, "20261125081500")  # before the first window closes
    assert status == 0 and out.splitlines()[-1] == "tick: nothing due"
    # Nobody ran tick for a while: three windows were missed. One tick runs them all, oldest first.
    status, out, err = tick(capsys, where, "20261125201500")
    assert status == 0, err
    missed = ["20261125120000", "20261125160000", "20261125200000"]
    assert re.findall(r"run (\d{14}) \(.*\): running", out) == missed
    assert out.splitlines()[-1] == "tick: 3 runs: 3 done, 0 failed"
    status, out, err = tick(capsys, where, "20261125201500")
    assert status == 0 and out.splitlines()[-1] == "tick: nothing due", "no window runs twice"
    status, out, err = tick(capsys, where, "20261126001400")  # 00:00 is not due before 00:15 (settle)
    assert status == 0 and out.splitlines()[-1] == "tick: nothing due"
    status, out, err = tick(capsys, where, "20261126010000")
    assert re.findall(r"run (\d{14}) \(.*\): running", out) == ["20261126000000"]
    windows = [*missed, "20261126000000"]

    shown = show(capsys, where, request_id)
    assert shown["status"] == "Pending"
    assert [r["run_timestamp"] for r in shown["runs"]] == windows
    events = good_events(data)
    for run in shown["runs"]:
        assert run["status"] == "Done" and len(run["attempts"]) == 1
        end = parse_run_timestamp(run["run_timestamp"])
        assert run["window"] == {
            "field": "capturedAt",
            "start": format_iso(end - 4 * 3600),
            "end": format_iso(end),
        }
        m = manifest(where["out"], request_id, run["run_timestamp"])
        assert run["records"] == m["totals"]["exported"] == captured_in(events, end - 4 * 3600, end)
    assert sum(r["records"] for r in shown["runs"]) == captured_in(
        events, parse_time("20261125080000"), parse_time("20261126000000")
    )
    assert shown["request"]["done_through"] == "20261126000000"
    [row] = activity(capsys, where)
    assert row["records"] == sum(r["records"] for r in shown["runs"])
    assert row["last_window"]["end"] == "2026-11-26T00:00:00Z"


def format_iso(epoch: int) -> str:
    from transforms.windows import iso

    return iso(epoch)


def test_stop_ends_a_recurring_request(capsys, where, data):
    status, request_id, out, err = create(
        capsys,
        where,
        data,
        "--frequency",
        "recurring",
        "--every-hours",
        "12",
        "--format",
        "parquet",
        now="20261125010000",
    )
    assert status == 0, err
    status, out, err = tick(capsys, where, "20261125130000")
    assert status == 0 and "run 20261125120000" in out
    status, out, err = cli(
        capsys, requests_cli.stop_main, request_id, "--state", where["state"], "--now", "20261125140000"
    )
    assert status == 0 and "stopped request" in out
    status, out, err = tick(capsys, where, "20261127130000")  # two more windows would be due
    assert status == 0 and out.splitlines()[-1] == "tick: nothing due"
    shown = show(capsys, where, request_id)
    assert shown["status"] == "Stopped" and shown["request"]["stopped"] == "2026-11-25T14:00:00Z"
    assert [r["run_timestamp"] for r in shown["runs"]] == ["20261125120000"]
    assert activity(capsys, where)[0]["status"] == "Stopped"
    status, out, err = cli(capsys, requests_cli.stop_main, request_id, "--state", where["state"])
    assert status == 0 and "already stopped" in out


def test_stop_refuses_a_one_time_request(capsys, tmp_path, data):
    where = {"state": str(tmp_path / "state"), "out": str(tmp_path / "out")}
    status, request_id, _, err = create(capsys, where, data, "--days", "1")
    assert status == 0, err
    status, out, err = cli(capsys, requests_cli.stop_main, request_id, "--state", where["state"])
    assert status == 2 and "is a one-time export" in err


def test_one_time_profile_export_refused_while_recurring_one_is_active(capsys, where, data):
    status, recurring, _, err = create(
        capsys,
        where,
        data,
        "--type",
        "profiles",
        "--frequency",
        "recurring",
        "--every-hours",
        "24",
        source="profiles-*",
    )
    assert status == 0, err
    same = where["out"] + "/"  # the same bucket and prefix, spelled with a slash
    status, _, out, err = create(
        capsys, where, data, "--type", "profiles", "--output", same, source="profiles-*"
    )
    assert status == 2
    assert f"recurring profile export {recurring} writes to" in err
    assert f"stop it first (`ctexport stop {recurring}`)" in err
    assert len(activity(capsys, where)) == 1, "the refused request is not recorded"

    # Another location is fine, and so is an events export to the same one.
    status, _, _, err = create(
        capsys, where, data, "--type", "profiles", "--output", where["out2"], source="profiles-*"
    )
    assert status == 0, err
    status, _, _, err = create(capsys, where, data, "--days", "1")
    assert status == 0, err

    assert requests_cli.stop_main([recurring, "--state", where["state"]]) == 0
    status, request_id, _, err = create(
        capsys, where, data, "--type", "profiles", "--output", same, source="profiles-*"
    )
    assert status == 0, err
    assert show(capsys, where, request_id)["status"] == "Done"


# ---- claims, leases, failures -------------------------------------------------------------------------------


def recurring_request(capsys, where, data, every: str = "4", now: str = "20261125083000") -> dict:
    status, request_id, _, err = create(
        capsys, where, data, "--frequency", "recurring", "--every-hours", every, now=now
    )
    assert status == 0, err
    return runs.get_request(state.open_state(where["state"]), request_id)


def test_two_concurrent_ticks_run_each_window_once(capsys, where, data, monkeypatch):
    req = recurring_request(capsys, where, data)
    store = state.open_state(where["state"])
    windows = ["20261125120000", "20261125160000", "20261125200000", "20261126000000"]
    calls = Counter()
    tried = defaultdict(set)
    cond = threading.Condition()
    real_claim = runs.claim_run

    def claim(store, req, run_ts, **kw):
        got = real_claim(store, req, run_ts, **kw)
        with cond:
            tried[run_ts].add(threading.current_thread().name)
            cond.notify_all()
        return got

    def runner(req, run_ts, now):
        with cond:
            calls[run_ts] += 1
            # Hold the window until the other tick has tried to claim it too: every window is contested.
            assert cond.wait_for(lambda: len(tried[run_ts]) == 2, timeout=60)
        fake_manifest(req, run_ts, records=7)
        return 0, None

    monkeypatch.setattr(runs, "claim_run", claim)
    clock = lambda: float(parse_time("20261126010000"))  # noqa: E731
    barrier = threading.Barrier(2)
    reports = {}

    def one(name: str) -> None:
        barrier.wait()
        reports[name] = runs.tick(state.open_state(where["state"]), clock, runner=runner, say=lambda s: None)

    threads = [threading.Thread(target=one, args=(n,), name=n) for n in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == dict.fromkeys(windows, 1)
    assert all(tried[w] == {"A", "B"} for w in windows)
    done_a = {w for _, w in reports["A"].done}
    done_b = {w for _, w in reports["B"].done}
    assert done_a | done_b == set(windows) and not done_a & done_b
    assert done_a and done_b, "both ticks ran some windows"
    for w in windows:
        run = store.get(state.run_name(req["request_id"], w)).data
        assert run["status"] == "Done" and len(run["attempts"]) == 1 and run["records"] == 7


def test_crashed_run_is_never_done_and_is_resumed_after_its_lease(capsys, where, data, monkeypatch):
    """A process that dies mid-run leaves it Running under a lease; a later tick takes it over with the same
    run timestamp, and the real pipeline cleans up what the dead attempt wrote."""

    class Crash(BaseException):
        pass

    seen = []

    def dying(req, run_ts, now):
        seen.append(run_ts)
        out = storage.open_storage(req["output"])
        out.write_bytes(
            naming.data_name(req["request_id"], run_ts, "Charged", "20261126", 9, DB, "json"), b"partial"
        )
        raise Crash()

    monkeypatch.setattr(runs, "export_runner", dying)
    with pytest.raises(Crash):
        create(capsys, where, data, "--days", "2", now="20261127000000")
    monkeypatch.undo()
    capsys.readouterr()
    [row] = activity(capsys, where)
    request_id = row["request_id"]
    assert row["status"] == "Running"
    run = show(capsys, where, request_id)["runs"][0]
    assert run["status"] == "Running" and run["lease_until"] == parse_time("20261127001000")
    assert manifest(where["out"], request_id, "20261127000000") is None

    status, out, err = tick(capsys, where, "20261127000500")  # the lease is still live: leave it
    assert status == 0 and out.splitlines()[-1] == "tick: nothing due"
    status, out, err = tick(capsys, where, "20261127001001")
    assert status == 0, err
    run = show(capsys, where, request_id)["runs"][0]
    assert run["status"] == "Done" and run["run_timestamp"] == seen[0] == "20261127000000"
    assert [a["status"] for a in run["attempts"]] == ["Failed", "Done"]
    assert run["attempts"][0]["error"].startswith("abandoned: ")
    m = manifest(where["out"], request_id, "20261127000000")
    listed = {f["name"] for f in m["files"]}
    assert run["files"] == [f["name"] for f in m["files"]]
    on_disk = {o.name for o in storage.open_storage(where["out"]).list(f"{request_id}-")}
    assert on_disk == listed, "the dead attempt's object is gone"


def test_failed_run_keeps_its_error_and_retries_with_the_same_run_timestamp(capsys, where, data):
    req = recurring_request(capsys, where, data, every="12", now="20261125010000")
    store = state.open_state(where["state"])
    attempts = []

    def flaky(req, run_ts, now):
        attempts.append(run_ts)
        if len(attempts) == 1:
            return 1, "run failed: simulated network outage"
        return runs.export_runner(req, run_ts, now)

    clock = lambda: float(parse_time("20261125130000"))  # noqa: E731
    report = runs.tick(store, clock, runner=flaky, say=lambda s: None)
    assert report.failed == [(req["request_id"], "20261125120000")]
    run = store.get(state.run_name(req["request_id"], "20261125120000")).data
    assert run["status"] == "Failed" and run["error"] == "run failed: simulated network outage"
    assert activity(capsys, where)[0]["status"] == "Pending"

    report = runs.tick(store, clock, runner=flaky, say=lambda s: None)
    assert report.done == [(req["request_id"], "20261125120000")]
    assert attempts == ["20261125120000", "20261125120000"]
    run = store.get(state.run_name(req["request_id"], "20261125120000")).data
    assert run["status"] == "Done" and [a["status"] for a in run["attempts"]] == ["Failed", "Done"]
    assert run["error"] is None and run["attempts"][0]["error"] == "run failed: simulated network outage"


def test_done_only_once_the_manifest_exists(capsys, tmp_path, data):
    where = {"state": str(tmp_path / "state"), "out": str(tmp_path / "out")}
    req = recurring_request(capsys, where, data, every="24", now="20261125010000")
    store = state.open_state(where["state"])
    clock = lambda: float(parse_time("20261126010000"))  # noqa: E731
    report = runs.tick(store, clock, runner=lambda r, ts, now: (0, None), say=lambda s: None, max_attempts=1)
    assert report.failed and not report.done
    run = store.get(state.run_name(req["request_id"], "20261126000000")).data
    assert run["status"] == "Failed" and "without writing its manifest" in run["error"]
    # Out of attempts: later ticks leave it alone.
    assert runs.tick(store, clock, runner=None, say=lambda s: None, max_attempts=1).skipped


def test_a_run_whose_manifest_exists_is_recorded_done_without_running_again(capsys, tmp_path, data):
    where = {"state": str(tmp_path / "state"), "out": str(tmp_path / "out")}
    req = recurring_request(capsys, where, data, every="24", now="20261125010000")
    store = state.open_state(where["state"])
    now = parse_time("20261126010000")
    claim = runs.claim_run(store, req, "20261126000000", owner="dead-host:1:x", clock=lambda: now - 3600)
    assert claim is not None  # ...and its process died after the manifest was written
    fake_manifest(req, "20261126000000", records=5)

    def must_not_run(*a):
        raise AssertionError("the run completed already")

    report = runs.tick(store, lambda: float(now), runner=must_not_run, say=lambda s: None)
    assert report.done == [(req["request_id"], "20261126000000")]
    run = store.get(state.run_name(req["request_id"], "20261126000000")).data
    assert run["status"] == "Done" and run["records"] == 5


def test_conditional_writes(where):
    store = state.open_state(where["state"])
    assert store.get("destinations/x.json") is None
    made = store.create("destinations/x.json", {"n": 0})
    assert made is not None and store.create("destinations/x.json", {"n": 9}) is None
    read = store.get("destinations/x.json")
    assert read.data == {"n": 0}
    assert store.update("destinations/x.json", {"n": 1}, read.version) is not None
    assert store.update("destinations/x.json", {"n": 2}, read.version) is None, "a stale version loses"
    assert store.get("destinations/x.json").data == {"n": 1}
    assert store.list("destinations/") == ["destinations/x.json"]


def test_claims_exclude_each_other_and_a_lost_claim_records_nothing(capsys, where, data):
    req = recurring_request(capsys, where, data)
    store = state.open_state(where["state"])
    name = state.run_name(req["request_id"], "20261125120000")
    now = float(parse_time("20261126010000"))
    first = runs.claim_run(store, req, "20261125120000", owner="a", clock=lambda: now)
    assert first is not None and first.doc.data["owner"] == "a"
    assert runs.claim_run(store, req, "20261125120000", owner="b", clock=lambda: now) is None
    later = now + runs.LEASE_SECONDS + 1  # "a" stopped renewing its lease
    second = runs.claim_run(store, req, "20261125120000", owner="c", clock=lambda: later)
    assert second is not None and second.doc.data["owner"] == "c"
    assert runs.claim_run(store, req, "20261125120000", owner="d", clock=lambda: later) is None
    assert not first.finish("Done") and first.lost, (
        "the first owner lost the run: its outcome is not recorded"
    )
    assert store.get(name).data["status"] == "Running"
    assert second.finish("Failed", error="boom")
    run = store.get(name).data
    assert run["status"] == "Failed" and [a["owner"] for a in run["attempts"]] == ["a", "c"]


def test_scheduler_runs_ticks_in_a_loop(capsys, tmp_path, data):
    where = {"state": str(tmp_path / "state"), "out": str(tmp_path / "out")}
    req = recurring_request(capsys, where, data, every="12", now="20261125010000")
    status = requests_cli.scheduler_main(
        ["--state", where["state"], "--now", "20261126010000", "--iterations", "2", "--interval-minutes", "0"]
    )
    out, err = capsys.readouterr()
    assert status == 0, err
    assert re.findall(r"run (\d{14}) \(.*\): running", out) == ["20261125120000", "20261126000000"]
    assert out.splitlines()[-1] == "tick: nothing due"
    store = state.open_state(where["state"])
    assert [r["status"] for r in runs.read_runs(store, req["request_id"])] == ["Done", "Done"]


def test_state_layout_holds_requests_runs_and_no_secrets(capsys, tmp_path, data):
    where = {"state": str(tmp_path / "state"), "out": str(tmp_path / "out")}
    status, request_id, _, err = create(capsys, where, data, "--days", "1")
    assert status == 0, err
    names = state.open_state(where["state"]).list("")
    assert names == [f"requests/{request_id}.json", f"runs/{request_id}/20261127120000.json"]


@pytest.mark.slow
def test_two_tick_processes_at_once_run_each_window_once(capsys, gcs_bucket, data):
    """Two real `ctexport tick` processes on one shared gs:// state, real exports: every window runs once."""
    import os
    import subprocess
    import sys

    where = {"state": f"gs://{gcs_bucket}/state", "out": f"gs://{gcs_bucket}/out"}
    req = recurring_request(capsys, where, data)
    command = [
        sys.executable,
        "-m",
        "ctexport.cli",
        "tick",
        "--state",
        where["state"],
        "--now",
        "20261126010000",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e.decode()[-2000:] for _, e in outs]
    ran = [w for out, _ in outs for w in re.findall(r"run (\d{14}) \(.*\): running", out.decode())]
    windows = ["20261125120000", "20261125160000", "20261125200000", "20261126000000"]
    assert sorted(ran) == windows, "each window ran in exactly one of the processes"
    store = state.open_state(where["state"])
    for run in runs.read_runs(store, req["request_id"]):
        assert run["status"] == "Done" and len(run["attempts"]) == 1
        assert (
            manifest(where["out"], req["request_id"], run["run_timestamp"])["totals"]["exported"]
            == run["records"]
        )


def test_heartbeat_renews_the_lease_until_another_process_owns_the_run(capsys, tmp_path, data):
    where = {"state": str(tmp_path / "state"), "out": str(tmp_path / "out")}
    req = recurring_request(capsys, where, data)
    store = state.open_state(where["state"])
    name = state.run_name(req["request_id"], "20261125120000")
    t = [float(parse_time("20261126010000"))]
    claim = runs.claim_run(store, req, "20261125120000", owner="a", clock=lambda: t[0], lease_seconds=600)
    assert store.get(name).data["lease_until"] == t[0] + 600
    t[0] += 300
    assert claim._renew()
    assert store.get(name).data["lease_until"] == t[0] + 600, "the lease moves with each beat"
    t[0] += 601  # a beat was missed: the lease lapses and another process takes over
    assert runs.claim_run(store, req, "20261125120000", owner="b", clock=lambda: t[0]) is not None
    assert not claim._renew() and claim.lost
    assert store.get(name).data["owner"] == "b"
