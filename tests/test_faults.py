"""The export under faults: GCS errors, resets, stalls and lost sessions injected by a proxy in front of the
emulator, a fault that persists, a process killed mid-write, and every bundle replayed. In each case the final
objects must equal those of a clean run, byte for byte (the manifest differs only by its output location), with
nothing lost, doubled or left behind.

The proxy is `ctexport/testing/fault_proxy.py`. Retries are shrunk for speed (`fast_retries`): backoff from
10 ms, a 1.5 s request timeout and a 2.5 s deadline per call; production values are checked separately.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from ctexport import generate, requests_cli
from ctexport.testing.fault_proxy import FaultProxy, lose_response, reset, stall, status
from pipelines.export import run
from transforms import naming, storage

pytestmark = [pytest.mark.emulator, pytest.mark.pipeline]

REPO = Path(__file__).resolve().parent.parent
END = 1795737600  # 2026-11-27T00:00:00Z
START = END - 2 * 86400
RUN_TS = "20261127120000"
DB = "W4R-565-5Z4Z"
REQ = "req_f"
CHUNK = 256 * 1024
RETRY_DEADLINE_S = 2.5
REQUEST_TIMEOUT_S = 1.5


# ---- data, baseline and helpers ------------------------------------------------------------------------------


TOTAL_GOOD = 3048  # 48 generated events of the five names and 3,000 large ones
KEPT_EVENTS = {"Song Played", "50% Off Viewed", "Level-Up/Bonus", "Tab #2 Opened", "購入完了"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Generated events of five names over two days (about ten small series, names that need encoding
    included) with four bad lines, plus two series of about 650 kB each, which go up as resumable uploads of
    three 256 KiB chunks (see `resumable_uploads`)."""
    folder = tmp_path_factory.mktemp("fault-data")
    lines = []
    for line in generate.generate_events(300, seed=11, start_ts=START, end_ts=END, bad=4, profiles=50):
        rec = generate._parse(line)
        if rec is None or not generate.good_event(rec) or rec["eventName"] in KEPT_EVENTS:
            lines.append(line)
    for name in ("Big One", "Big Two"):
        for i in range(1500):
            rec = {"eventName": name, "ts": START + 3600 + i, "eventProps": {"i": i, "pad": f"{i:06d}" * 66}}
            lines.append(json.dumps(rec).encode())
    generate.write_jsonl(folder / "events-0.jsonl", lines)
    return folder


@pytest.fixture(scope="module")
def bucket(gcs_emulator) -> str:
    name = f"faults-{uuid.uuid4().hex[:16]}"
    gcs_emulator.create_bucket(name)
    return name


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(storage, "RETRY_INITIAL_S", 0.01)
    monkeypatch.setattr(storage, "RETRY_MAX_S", 0.1)
    monkeypatch.setattr(storage, "RETRY_DEADLINE_S", RETRY_DEADLINE_S)
    monkeypatch.setattr(storage, "REQUEST_TIMEOUT_S", REQUEST_TIMEOUT_S)


@pytest.fixture
def resumable_uploads(monkeypatch):
    """Files over 256 KiB go up as resumable uploads in 256 KiB chunks (the library's threshold is 8 MiB)."""
    from google.cloud.storage import blob

    monkeypatch.setattr(blob, "_MAX_MULTIPART_SIZE", CHUNK)
    monkeypatch.setattr(storage, "UPLOAD_CHUNK_BYTES", CHUNK)


@pytest.fixture
def proxy(gcs_emulator, monkeypatch, fast_retries, resumable_uploads):
    """The emulator behind a fault proxy; STORAGE_EMULATOR_HOST points at the proxy for this test."""
    with FaultProxy(gcs_emulator.url) as p:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", p.url)
        yield p


def argv_for(source: str, output: str, *extra: str, request_id: str = REQ) -> list[str]:
    return [
        "--source", source, "--output", output, "--request_id", request_id, "--database_id", DB,
        "--run_timestamp", RUN_TS, "--start", "20261125", "--end", "20261127", *extra,
    ]  # fmt: skip


def export(capsys, source: str, output: str, *extra: str, request_id: str = REQ) -> tuple[int, str, str]:
    status_ = run(argv_for(source, output, *extra, request_id=request_id))
    out, err = capsys.readouterr()
    return status_, out, err


def gcs_objects(url: str) -> dict[str, bytes]:
    store = storage.open_storage(url)
    return {o.name: store.read_bytes(o.name) for o in store.list("")}


def folder_objects(folder: Path) -> dict[str, bytes]:
    """Every file under the folder, hidden and temporary ones included."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def comparable(objects: dict[str, bytes]) -> dict[str, object]:
    """Objects by name; manifests parsed and without request.output (the one field two locations change)."""
    out: dict[str, object] = {}
    for name, body in objects.items():
        if name.startswith(naming.MANIFESTS_DIR + "/"):
            m = json.loads(body)
            m["request"].pop("output")
            out[name] = m
        else:
            out[name] = body
    return out


@pytest.fixture(scope="module")
def clean(data, bucket, gcs_emulator, tmp_path_factory) -> dict:
    """A fault-free run through a proxy: its objects, and how many requests of each kind it made."""
    mp = pytest.MonkeyPatch()
    from google.cloud.storage import blob

    mp.setattr(blob, "_MAX_MULTIPART_SIZE", CHUNK)
    mp.setattr(storage, "UPLOAD_CHUNK_BYTES", CHUNK)
    try:
        with FaultProxy(gcs_emulator.url) as p:
            mp.setenv("STORAGE_EMULATOR_HOST", p.url)
            url = f"gs://{bucket}/clean"
            assert run(argv_for(f"{data}/events-*", url)) == 0
            counts = Counter(k for s in p.log for k in s.kinds)
            objects = gcs_objects(url)
    finally:
        mp.undo()
    m = json.loads(objects[naming.manifest_name(REQ, RUN_TS)])
    assert m["totals"]["exported"] == TOTAL_GOOD and m["totals"]["bad"] == 4
    assert len(m["files"]) >= 10 and m["errors"], "small series, two large ones and dead letters"
    assert counts["resumable_start"] == 2 and counts["final_chunk"] == 2 and counts["chunk"] == 6
    return {"objects": objects, "counts": counts, "local": None}


def assert_same_as_clean(objects: dict[str, bytes], clean: dict) -> None:
    assert sorted(objects) == sorted(clean["objects"]), "the same objects: none missing, none extra"
    assert comparable(objects) == comparable(clean["objects"]), "the same bytes in every object"


# ---- transient faults: the run completes and equals a clean run --------------------------------------------

# (id, [(fault, rule options)], {request kind: how many more requests than a clean run}). The counts are exact:
# each fault costs one retry of that request, or (a lost session) one fresh upload of the file: bounded.
TRANSIENT = [
    (
        "503 burst on simple uploads",
        [(status(503), {"kind": "multipart", "skip": 1, "times": 3})],
        {"multipart": 3},
    ),
    (
        "429 burst at the first requests",
        [(status(429), {"kind": "any", "times": 4})],
        {"bucket": 4, "upload": 0},
    ),
    (
        "500, 502, 504 and 408 on one upload",
        [(status(c), {"kind": "multipart", "skip": 2}) for c in (500, 502, 504, 408)],
        {"multipart": 4},
    ),
    ("reset at the first request", [(reset(), {"kind": "any"})], {"bucket": 1, "upload": 0}),
    (
        "reset mid-upload",
        [(reset(after_body_bytes=600), {"kind": "multipart", "skip": 3, "times": 2})],
        {"multipart": 2},
    ),
    (
        "simple upload done, answer lost",
        [(lose_response(), {"kind": "multipart", "skip": 1})],
        {"multipart": 1},
    ),
    ("stalled upload response", [(stall(30), {"kind": "multipart", "skip": 4})], {"multipart": 1}),
    ("503 on the orphan listing", [(status(503), {"kind": "list", "times": 3})], {"list": 3, "upload": 0}),
    (
        "503 on the dead-letter upload",
        [(status(503), {"kind": "multipart", "body": rb"_errors/", "times": 2})],
        {"multipart": 2},
    ),
    (
        "reset on the manifest upload",
        [(reset(), {"kind": "multipart", "body": rb"_manifests/"})],
        {"multipart": 1},
    ),
    (
        "503 opening a resumable session",
        [(status(503), {"kind": "resumable_start", "times": 2})],
        {"resumable_start": 2, "chunk": 0},
    ),
    (
        "503 burst on resumable chunks",
        [(status(503), {"kind": "chunk", "skip": 1, "times": 3})],
        {"chunk": 3},
    ),
    ("reset mid-chunk", [(reset(after_body_bytes=100_000), {"kind": "chunk", "skip": 1})], {"chunk": 1}),
    ("reset at the final chunk", [(reset(), {"kind": "final_chunk"})], {"final_chunk": 1, "upload": 1}),
    # A 410 on the second chunk: the upload starts over (a new session, three chunks).
    (
        "410 on the resumable session",
        [(status(410), {"kind": "chunk", "skip": 1})],
        {"resumable_start": 1, "upload": 3},
    ),
    # The server completed the upload; the client retries the final chunk (fake-gcs-server answers 404 for the
    # finished session, GCS 200), then starts over: one more final chunk, then a whole new upload.
    (
        "final chunk done, answer lost",
        [(lose_response(), {"kind": "final_chunk"})],
        {"resumable_start": 1, "upload": 5},
    ),
    (
        "stalled final chunk",
        [(stall(30), {"kind": "final_chunk", "skip": 1})],
        {"resumable_start": 1, "upload": 5},
    ),
]


@pytest.mark.parametrize("faults, extra", [t[1:] for t in TRANSIENT], ids=[t[0] for t in TRANSIENT])
def test_transient_fault_is_retried_and_output_equals_a_clean_run(
    data, bucket, clean, proxy, capsys, faults, extra
):
    rules = [proxy.add(fault, **opts) for fault, opts in faults]
    url = f"gs://{bucket}/{uuid.uuid4().hex[:8]}"
    code, out, err = export(capsys, f"{data}/events-*", url)
    assert code == 0, err
    for rule in rules:
        assert rule.hits == rule.times, f"the fault {rule.fault} was injected as planned"
    proxy.clear()
    counts = Counter(k for s in proxy.log for k in s.kinds)
    assert_same_as_clean(gcs_objects(url), clean)
    for kind, more in extra.items():
        assert counts[kind] - clean["counts"][kind] == more, (kind, counts, clean["counts"])


@pytest.mark.parametrize(
    "fault, opts",
    [
        (status(503), {"kind": "download", "times": 3}),
        (reset(), {"kind": "download", "skip": 1, "times": 2}),
        (status(429), {"kind": "list", "times": 2}),
    ],
    ids=["503 burst on source reads", "resets on source reads", "429 listing the source glob"],
)
def test_faults_reading_a_gcs_source_are_retried(data, bucket, clean, proxy, capsys, fault, opts):
    store = storage.open_storage(f"gs://{bucket}/src-{uuid.uuid4().hex[:8]}")
    store.write_file("events-0.jsonl", str(data / "events-0.jsonl"))
    rule = proxy.add(fault, **opts)
    url = f"gs://{bucket}/{uuid.uuid4().hex[:8]}"
    code, out, err = export(capsys, store.display("events-*"), url)
    assert code == 0, err
    assert rule.hits == rule.times
    proxy.clear()
    objects = gcs_objects(url)
    # Data and dead letters equal; the manifest names its (other) source, so compare it without that.
    m = json.loads(objects.pop(naming.manifest_name(REQ, RUN_TS)))
    c = dict(clean["objects"])
    mc = json.loads(c.pop(naming.manifest_name(REQ, RUN_TS)))
    assert objects.keys() == c.keys()
    for name in objects:
        if name.startswith(naming.ERRORS_DIR):  # dead letters name their source file
            a = [json.loads(x) for x in objects[name].splitlines()]
            b = [json.loads(x) for x in c[name].splitlines()]
            for x in a + b:
                x["source"].pop("file")
            assert a == b
        else:
            assert objects[name] == c[name], name
    for x in (m, mc):
        x.pop("sources"), x["request"].pop("sources"), x["request"].pop("output")
    for f in m["errors"] + mc["errors"]:
        f.pop("crc32c"), f.pop("bytes")
    assert m == mc


# ---- a fault that persists ----------------------------------------------------------------------------------


def test_persistent_fault_fails_clearly_without_manifest_and_the_rerun_completes(
    data, bucket, clean, proxy, capsys
):
    url = f"gs://{bucket}/{uuid.uuid4().hex[:8]}"
    rule = proxy.add(status(503), kind="multipart", skip=3, times=None)
    started = time.monotonic()
    code, out, err = export(capsys, f"{data}/events-*", url)
    elapsed = time.monotonic() - started
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("run failed: ") and "503" in last and "exceeded" in last, last
    assert rule.hits > 3
    assert elapsed < RETRY_DEADLINE_S * 5 + 20, "bounded: the retry deadline ends the run, it does not hang"
    proxy.clear()
    left = gcs_objects(url)
    assert naming.manifest_name(REQ, RUN_TS) not in left
    assert 0 < len(left) < len(clean["objects"]) - 1, "the failed attempt wrote part of the output"

    code, out, err = export(capsys, f"{data}/events-*", url)
    assert code == 0, err
    assert_same_as_clean(gcs_objects(url), clean)


def test_persistent_fault_while_checking_the_bucket_fails_with_one_clear_line(
    data, bucket, proxy, capsys, tmp_path
):
    proxy.add(status(503), kind="bucket", times=None)
    try:
        code = run(argv_for(f"{data}/events-*", f"gs://{bucket}/never"))
    except Exception as e:  # what a user sees: a traceback and Python's exit status 1
        code = f"raised {type(e).__name__}"
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("run failed: ") and "Traceback" not in err


def test_a_failed_attempt_leaves_no_copy_of_the_data_in_the_temp_location(
    data, bucket, proxy, capsys, tmp_path
):
    temp = tmp_path / "temp"
    proxy.add(status(503), kind="multipart", times=None)
    code, out, err = export(capsys, f"{data}/events-*", f"gs://{bucket}/{uuid.uuid4().hex[:8]}",
                            "--temp_location", str(temp))  # fmt: skip
    assert code == 1
    assert (temp / "ctexport-spill").is_dir(), "the run did spill there"
    assert [p for p in (temp / "ctexport-spill").rglob("*") if p.is_file()] == []


def test_persistent_fault_through_ctexport_create_logs_failed_then_tick_completes(
    data, bucket, proxy, capsys, tmp_path
):
    st = str(tmp_path / "state")
    url = f"gs://{bucket}/{uuid.uuid4().hex[:8]}"
    rule = proxy.add(status(503), kind="multipart", skip=3, times=None)
    code = requests_cli.create_main(
        ["--source", f"{data}/events-*", "--start", "20261125", "--end", "20261127", "--output", url,
         "--database-id", DB, "--state", st, "--now", "20261127120000"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1 and rule.hits > 0
    request_id = out.strip().splitlines()[-1]
    assert requests_cli.activity_main(["--state", st, "--json"]) == 0
    log = json.loads(capsys.readouterr().out)
    assert [(r["request_id"], r["status"]) for r in log] == [(request_id, "Failed")]
    assert requests_cli.show_main([request_id, "--state", st, "--json"]) == 0
    shown = capsys.readouterr().out
    assert "503" in shown and "run failed" in shown, "the activity log says why"
    proxy.clear()
    assert not storage.open_storage(url).exists(naming.manifest_name(request_id, RUN_TS))
    assert gcs_objects(url), "the failed attempt left objects behind"

    assert requests_cli.tick_main(["--state", st, "--now", "20261127121500"]) == 0
    capsys.readouterr()
    assert requests_cli.activity_main(["--state", st, "--json"]) == 0
    assert [r["status"] for r in json.loads(capsys.readouterr().out)] == ["Done"]

    # The same request run once, cleanly, elsewhere: the retried output is identical, nothing more.
    clean_url = f"gs://{bucket}/{uuid.uuid4().hex[:8]}"
    code, _, err = export(capsys, f"{data}/events-*", clean_url, request_id=request_id)
    assert code == 0, err
    assert comparable(gcs_objects(url)) == comparable(gcs_objects(clean_url))


# ---- every bundle replayed ----------------------------------------------------------------------------------


def test_every_bundle_replayed_changes_nothing(data, bucket, clean, proxy, capsys):
    url = f"gs://{bucket}/{uuid.uuid4().hex[:8]}"
    code, out, err = export(capsys, f"{data}/events-*", url, "--direct_runner_bundle_repeat", "2")
    assert code == 0, err
    counts = Counter(k for s in proxy.log for k in s.kinds)
    assert counts["multipart"] >= 2 * clean["counts"]["multipart"], "the bundles did run more than once"
    assert_same_as_clean(gcs_objects(url), clean)
    assert "records read 3,052" in out and "exported 3,048" in out, "counts are not doubled"


# ---- the process killed -------------------------------------------------------------------------------------

# Runs the export in a child process that stops at a chosen point of its writing, says so on stdout and waits
# to be killed. Points: "between" (data files 1-3 written, the 4th not begun), "mid-write" (half of the 4th
# data file's bytes in its temporary file), "manifest" (everything but the manifest written).
_CHILD = r"""
import shutil, sys
from transforms import naming, storage

point = sys.argv[1]
calls = {"write_file": 0, "copy": 0}
real_copy = shutil.copyfile
real_write_file, real_write_bytes = storage.LocalStorage.write_file, storage.LocalStorage.write_bytes

def stop():
    print("STOPPED", flush=True)
    sys.stdin.read()  # until killed

def move_file(self, name, local_path):  # data files; by copy, as from a spool on another device
    calls["write_file"] += 1
    if point == "between" and calls["write_file"] == 4:
        stop()
    return real_write_file(self, name, local_path)

def copy(src, dst, **kw):  # how LocalStorage fills its temporary file
    calls["copy"] += 1
    if point == "mid-write" and calls["copy"] == 4:
        with open(src, "rb") as f, open(dst, "wb") as g:
            data = f.read()
            g.write(data[: len(data) // 2])
        stop()
    return real_copy(src, dst, **kw)

def write_bytes(self, name, data):  # dead letters and the manifest
    if point == "manifest" and name.startswith(naming.MANIFESTS_DIR + "/"):
        stop()
    return real_write_bytes(self, name, data)

shutil.copyfile = copy
storage.LocalStorage.move_file = move_file
storage.LocalStorage.write_bytes = write_bytes
from pipelines.export import main
sys.argv = ["pipelines.export", *sys.argv[2:]]
main()
"""


def _run_until_stopped(argv: list[str], point: str, log: Path, tmp: Path | None = None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
    if tmp is not None:
        env["TMPDIR"] = str(tmp)  # the child's temporary folder
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, point, *argv],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 120
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while line != b"STOPPED\n" and sel.select(timeout=max(0.0, deadline - time.monotonic())):
                line = proc.stdout.readline()
                if not line:  # the child ended
                    break
        assert line == b"STOPPED\n", f"the child did not reach {point!r}: {log.read_text()[-3000:]}"
    finally:
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait(timeout=30)
        proc.stdin.close()
        proc.stdout.close()
    assert proc.returncode == -9


@pytest.fixture(scope="module")
def clean_folder(data, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("clean") / "out"
    assert run(argv_for(f"{data}/events-*", str(out))) == 0
    return folder_objects(out)


KILL_POINTS = ["between", "mid-write", "manifest"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_killed_mid_write_then_rerun_equals_a_clean_run(
    data, tmp_path, clean_folder, capsys, monkeypatch, point
):
    out = tmp_path / "out"
    argv = argv_for(f"{data}/events-*", str(out))
    temp = tmp_path / "tmp"  # the system's temporary folder, for both attempts
    temp.mkdir()
    _run_until_stopped(argv, point, tmp_path / "child.log", temp)
    left = folder_objects(out)
    assert naming.manifest_name(REQ, RUN_TS) not in left, "killed before it completed"
    assert len([n for n in left if "/" not in n]) >= 3, "some data files exist"
    if point == "mid-write":
        assert list(temp.rglob("*.part")), "the killed attempt left a file half-written"
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    code = run(argv)
    _, err = capsys.readouterr()
    assert code == 0, err
    assert comparable(folder_objects(out)) == comparable(clean_folder)
    # Nothing of either attempt is left in the temporary folder: the rerun removed what the killed one spilled
    # and spooled there.
    assert [p for p in temp.rglob("*") if p.is_file()] == []


# ---- production retry settings ------------------------------------------------------------------------------


def test_production_retries_back_off_and_are_bounded():
    from google.api_core import exceptions as gx

    r = storage._retry()
    assert storage.RETRY_INITIAL_S >= 0.5 and r._multiplier == 2.0, "exponential backoff"
    assert r._maximum == storage.RETRY_MAX_S <= 60
    assert r._timeout == storage.RETRY_DEADLINE_S <= 300, "a persistent fault ends a call within minutes"
    assert 0 < storage.REQUEST_TIMEOUT_S <= 120, "a stalled request is abandoned"
    assert storage._calls()["timeout"] == storage.REQUEST_TIMEOUT_S
    for retried in (gx.TooManyRequests("x"), gx.ServiceUnavailable("x"), gx.InternalServerError("x"),
                    ConnectionResetError(), gx.GatewayTimeout("x")):  # fmt: skip
        assert r._predicate(retried), retried
    for final in (gx.NotFound("x"), gx.Forbidden("x"), gx.BadRequest("x"), ValueError()):
        assert not r._predicate(final), final
