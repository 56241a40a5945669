"""The export on Dataflow, proven offline: the job graph builds and serialises for the DataflowRunner
(`--dry_run`, DESIGN.md), the flex template launcher's command submits it, the workers get the package,
and the multi-process DirectRunner writes the same objects as one process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from ctexport import generate
from pipelines import export
from pipelines.export import build_pipeline, make_runner, run
from pipelines.options import Request, validate
from transforms import naming, storage

ROOT = Path(__file__).resolve().parent.parent
END = 1795737600  # 2026-11-27T00:00:00Z
START = END - 2 * 86400
RUN_TS = "20261127120000"
DB = "W4R-565-5Z4Z"
# What a Dataflow submission needs, and nothing that reaches Google: --dry_run stops before the API call,
# --no_auth skips the credentials lookup. Valid-looking names: Beam checks the project id and bucket names.
DATAFLOW = [
    "--runner", "DataflowRunner", "--dry_run", "True", "--no_auth",
    "--project", "ctexport-test", "--region", "europe-west1", "--temp_location", "gs://ctexport-test-temp/tmp",
]  # fmt: skip
OUR_STEPS = {"ExtractSeries", "GroupBySeries", "WriteSeries", "Finalize"}


@pytest.fixture(autouse=True)
def _staging_in_tmp_path(tmp_path, monkeypatch):
    """Beam builds what it would stage (pickled session, sdist) in a temporary folder it leaves behind."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    lines = list(generate.generate_events(300, seed=5, start_ts=START, end_ts=END, bad=3, profiles=50))
    generate.write_jsonl(folder / "events-0.jsonl", lines[:150])
    generate.write_jsonl(folder / "events-1.jsonl.gz", lines[150:], gzip=True)
    generate.write_jsonl(
        folder / "profiles-0.jsonl", generate.generate_profiles(60, seed=5, start_ts=START, end_ts=END)
    )
    return folder


def request_flags(export_type: str, frequency: str) -> list[str]:
    flags = ["--export_type", export_type, "--frequency", frequency, "--run_timestamp", RUN_TS]
    if frequency == "recurring":
        flags += ["--every_hours", "4"]
    elif export_type == "events":
        flags += ["--start", "20261125", "--end", "20261127"]
    return flags


def dry_run(argv: list[str], source: str):
    """Build the export for Dataflow without GCS: validate without storage checks, list the local sources."""
    options = PipelineOptions(argv)
    request, _ = validate(options, check_storage=False)
    files, unmatched = storage.expand_sources([source])
    assert files and not unmatched
    assert make_runner(options) is None, "Beam resolves --runner DataflowRunner itself"
    p = beam.Pipeline(options=options)
    build_pipeline(p, request, files)
    result = p.run()
    result.wait_until_finish()
    return request, result


def par_do_functions(proto) -> dict[str, object]:
    """Every ParDo's DoFn as a Dataflow worker gets it: unpickled from the job's own payload."""
    out = {}
    for transform in proto.components.transforms.values():
        if transform.spec.urn == common_urns.primitives.PAR_DO.urn:
            payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
            fn = pickler.loads(payload.do_fn.payload)
            out[transform.unique_name] = fn[0] if isinstance(fn, tuple) else fn
    return out


@pytest.mark.parametrize("fmt", ["json", "csv", "xml", "parquet"])
@pytest.mark.parametrize(
    "export_type, frequency", [("events", "once"), ("profiles", "once"), ("events", "recurring")]
)
def test_dataflow_job_graph_builds_and_serialises(data, fmt, export_type, frequency):
    kind = "profiles" if export_type == "profiles" else "events"
    argv = DATAFLOW + [
        "--source", f"{data}/{kind}-*", "--output", "gs://ctexport-test-out/exports",
        "--request_id", "req_1", "--database_id", DB, "--format", fmt,
    ] + request_flags(export_type, frequency)  # fmt: skip
    # Beam records the submitting environment with `pip freeze` (0.7 s); the launcher test keeps that step.
    argv += ["--experiments", "disable_logging_submission_environment"]
    request, result = dry_run(argv, f"{data}/{kind}-*")
    assert str(result.state) in ("DONE", "PipelineState.DONE")
    proto = result.job.proto_pipeline
    names = {t.unique_name for t in proto.components.transforms.values()}
    assert OUR_STEPS <= names, sorted(names)
    assert {e.urn for e in proto.components.environments.values()} == {common_urns.environments.DOCKER.urn}
    # The graph round-trips: each DoFn unpickles as a worker would, carrying this very request.
    fns = par_do_functions(proto)
    ours = {name: fn for name, fn in fns.items() if type(fn).__module__.startswith("transforms.")}
    assert {name.split("/")[0] for name in ours} >= {"ExtractSeries", "WriteSeries", "Finalize"}
    for name, fn in ours.items():
        carried = [v for v in vars(fn).values() if isinstance(v, Request)]
        assert carried == [request], name
        assert carried[0].format == fmt and carried[0].export_type == export_type


def test_workers_get_the_package_through_the_setup_file(data):
    """With FLEX_TEMPLATE_PYTHON_SETUP_FILE the launcher stages ctexport as an sdist that every worker
    installs: it must hold every module of the graph and the Avro schemas."""
    argv = DATAFLOW + [
        "--setup_file", str(ROOT / "setup.py"),
        "--source", f"{data}/events-*", "--output", "gs://ctexport-test-out/exports",
        "--request_id", "req_1", "--database_id", DB,
    ] + request_flags("events", "once")  # fmt: skip
    _, result = dry_run(argv, f"{data}/events-*")
    staged = {}
    for env in result.job.proto_pipeline.components.environments.values():
        for artifact in env.dependencies:
            to = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(artifact.role_payload)
            path = beam_runner_api_pb2.ArtifactFilePayload.FromString(artifact.type_payload).path
            staged[to.staged_name] = path
    tarball = staged["workflow.tar.gz"]
    assert tarball.startswith(tempfile.gettempdir())
    with tarfile.open(tarball) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
    modules = {
        str(p.relative_to(ROOT))
        for folder in ("pipelines", "transforms", "ctexport")
        for p in (ROOT / folder).rglob("*")
        if p.suffix in (".py", ".avsc") and "__pycache__" not in p.parts
    }
    assert "transforms/schemas/event.avsc" in modules and "pipelines/export.py" in modules
    assert modules <= members, sorted(modules - members)


def dockerfile_env() -> dict[str, str]:
    text = (ROOT / "templates" / "Dockerfile").read_text()
    workdir = re.search(r"^ARG WORKDIR=(\S+)", text, re.M)[1]
    env = dict(re.findall(r'^ENV (FLEX_TEMPLATE_PYTHON_\w+)="?([^"\n]+)"?', text, re.M))
    return {k: v.replace("${WORKDIR}", workdir) for k, v in env.items()} | {"WORKDIR": workdir}


def test_the_flex_template_launcher_command_submits_the_job(data, tmp_path):
    """What the launcher VM runs: `python $FLEX_TEMPLATE_PYTHON_PY_FILE --setup_file
    $FLEX_TEMPLATE_PYTHON_SETUP_FILE` plus the template parameters and Dataflow's own flags, the file run as a
    script (not as a module), through the real entry point: validation, graph, submission."""
    env = dockerfile_env()
    # The image's WORKDIR holds the repository's files: map it onto this checkout.
    py_file = ROOT / os.path.relpath(env["FLEX_TEMPLATE_PYTHON_PY_FILE"], env["WORKDIR"])
    setup_file = ROOT / os.path.relpath(env["FLEX_TEMPLATE_PYTHON_SETUP_FILE"], env["WORKDIR"])
    out = tmp_path / "out"  # a local output keeps validation's storage checks offline
    argv = [sys.executable, str(py_file), "--setup_file", str(setup_file)] + DATAFLOW
    argv += ["--source", f"{data}/events-*", "--output", str(out), "--request_id", "req_1"]
    argv += ["--database_id", DB, "--frequency", "recurring", "--every_hours", "4"]
    env = dict(os.environ, TMPDIR=str(tmp_path))  # where Beam builds the sdist it stages
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "submitted; the manifest appears when the run is done" in done.stderr
    assert "recurring events, capturedAt in [" in done.stderr
    assert [p.name for p in tmp_path.glob("*/workflow.tar.gz")] or list(tmp_path.glob("*/ctexport-*.tar.gz"))
    assert not (out / "_manifests").exists()


def objects(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_objects(one: Path, two: Path) -> None:
    """The two runs' folders hold the same objects; their manifests differ only in the output location."""
    a, b = objects(one), objects(two)
    manifest = naming.manifest_name("req_1", RUN_TS)
    ma, mb = json.loads(a.pop(manifest)), json.loads(b.pop(manifest))
    assert ma["request"].pop("output") == str(one) and mb["request"].pop("output") == str(two)
    assert ma == mb
    assert a == b
    assert len(a) >= 10 and any("_errors/" in name for name in a), "rolled files and dead letters compared"


@pytest.mark.pipeline
@pytest.mark.slow
@pytest.mark.parametrize("fmt,compression,shard_bytes", [("csv", "gzip", None), ("json", "none", "3000")])
def test_multi_process_direct_runner_writes_the_same_objects(
    data, tmp_path, capsys, monkeypatch, fmt, compression, shard_bytes
):
    """Two worker processes split the reads and the series differently from one: the objects are the same.
    With small shards, the shards of a series spread over both workers and are numbered after."""
    if shard_bytes:
        monkeypatch.setenv("CTEXPORT_SHARD_BYTES", shard_bytes)  # the workers inherit it
    common = [
        "--source", f"{data}/events-*", "--request_id", "req_1", "--database_id", DB,
        "--run_timestamp", RUN_TS, "--start", "20261125", "--end", "20261127",
        "--format", fmt, "--compression", compression, "--max_file_bytes", "4000",
    ]  # fmt: skip
    # The manifest records the output location: give both runs the same folder name, in two parents.
    one, two = tmp_path / "one" / "exports", tmp_path / "two" / "exports"
    workers = []  # what each pipeline's writers were told
    real = export.WriteSeries
    monkeypatch.setattr(export, "WriteSeries", lambda *a, **k: workers.append(k["workers"]) or real(*a, **k))
    assert run(common + ["--output", str(one)]) == 0
    capsys.readouterr()
    multi = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
    assert run(common + ["--output", str(two)] + multi) == 0
    err = capsys.readouterr().err
    # The workers' own log lines show as this process's: the read tasks' progress, the shards planned.
    assert re.search(r"^ctexport: read events-0\.jsonl\S*: [\d,]+ records", err, re.M), err[-2000:]
    assert bool(re.search(r"^ctexport: .* \d{8}: \d+ shards$", err, re.M)) == bool(shard_bytes)
    assert "Worker: " not in err  # and nothing else of theirs
    assert workers == [0, 2], "two workers share the shards (_SpreadShards)"
    assert_same_objects(one, two)


@pytest.mark.pipeline
@pytest.mark.slow
def test_the_command_line_forks_its_workers_and_writes_the_same_objects(data, tmp_path, monkeypatch):
    """`python -m pipelines.export` forks its workers before it builds the pipeline (pipelines.worker): the
    runner's workers hand their work to them, and the objects are those of one process."""
    monkeypatch.setenv("CTEXPORT_SHARD_BYTES", "3000")  # the shards of a series spread over both workers
    common = [
        "--source", f"{data}/events-*", "--request_id", "req_1", "--database_id", DB,
        "--run_timestamp", RUN_TS, "--start", "20261125", "--end", "20261127",
        "--format", "xml", "--compression", "gzip", "--max_file_bytes", "4000",
    ]  # fmt: skip
    one, two = tmp_path / "one" / "exports", tmp_path / "two" / "exports"
    assert run(common + ["--output", str(one)]) == 0
    multi = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
    argv = [sys.executable, "-m", "pipelines.export", *common, "--output", str(two), *multi]
    env = dict(os.environ, CTEXPORT_DEBUG="1")  # says which worker command the runner got
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"local workers: .* -m pipelines\.worker --standby \S+", done.stderr)
    assert " shards" in done.stderr
    assert "SpreadShards/OneSharePerWorker" in done.stderr  # the runner ran the shares' stage
    assert "to whichever is free" in done.stderr  # with a pool: each writer claims the shards it writes
    assert_same_objects(one, two)


def test_a_local_worker_that_fails_says_so_in_its_exit_status():
    """`pipelines.worker` ends its process at once, skipping Python's teardown: a harness that fails must
    still exit non-zero (the runner reports a worker's non-zero exit) and show why."""
    env = {k: v for k, v in os.environ.items() if k != "CONTROL_API_SERVICE_DESCRIPTOR"}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.worker"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "CONTROL_API_SERVICE_DESCRIPTOR" in done.stderr
