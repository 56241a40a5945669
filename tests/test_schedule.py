"""`ctexport schedule` / `unschedule`: the Cloud Scheduler job, built offline and checked with the client
libraries' own request types (Cloud Scheduler's and Dataflow's), and what a scheduled launch exports."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from google.api_core.exceptions import AlreadyExists, NotFound, PermissionDenied
from google.cloud import dataflow_v1beta3, scheduler_v1

from ctexport import generate, runs, schedule, state
from pipelines.export import run
from pipelines.options import validate
from transforms import naming
from transforms.windows import default_run_timestamp, format_run_timestamp

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = "gs://my-project-ctexport/templates/ctexport.json"
PLACE = ["--project", "my-project", "--region", "europe-west1", "--template", TEMPLATE]
JOB_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,1022}[a-z0-9])?$")  # Dataflow's rule for job names


def recurring(**changes) -> dict:
    """A recurring request as `ctexport create` stores it (ctexport/requests_cli.py)."""
    req = {
        "request_id": "1732700000_a1b2c3",
        "created": "2024-11-27T09:33:20Z",
        "type": "select-events",
        "export_type": "events",
        "events": ["Charged", "Size, Colour Chosen"],
        "frequency": "recurring",
        "every_hours": 6,
        "settle_minutes": 20,
        "start": None,
        "end": None,
        "format": "csv",
        "compression": "gzip",
        "json_header": True,
        "csv_formula_guard": True,
        "timezone": "Asia/Kolkata",
        "max_file_bytes": 50_000_000,
        "max_bad_records": 10,
        "source": "gs://my-event-store/events/*.jsonl.gz,gs://my-event-store/late/*.avro",
        "source_format": None,
        "output": "gs://my-exports/clevertap",
        "destination": None,
        "key_file": None,
        "database_id": "W4R-565-5Z4Z",
        "first_run_timestamp": "20241127120000",
        "done_through": None,
        "stopped": None,
    }
    req.update(changes)
    return req


def write_request(tmp_path: Path, req: dict) -> str:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(req))
    return str(path)


def dry_run(capsys, tmp_path, req: dict, *flags: str) -> tuple[int, str, str]:
    argv = [req["request_id"], *PLACE, "--request-json", write_request(tmp_path, req), "--dry-run", *flags]
    status = schedule.schedule_main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def metadata_params() -> dict[str, dict]:
    meta = json.loads((ROOT / "templates" / "metadata.json").read_text())
    return {p["name"]: p for p in meta["parameters"]}


# ---- cron and names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "every, settle, cron",
    [
        (4, 15, "15 */4 * * *"),
        (6, 0, "0 */6 * * *"),
        (8, 59, "59 */8 * * *"),
        (12, 90, "30 1-23/12 * * *"),
        (24, 15, "15 0 * * *"),
        (24, 150, "30 2 * * *"),
        (4, 4 * 60 + 5, "5 */4 * * *"),
    ],
)
def test_cron_fires_each_period_after_the_settle_delay(every, settle, cron):
    assert schedule.cron_schedule(every, settle) == cron


def fire_times(cron: str, day: int) -> list[int]:
    """Expand the `M H * * *` crons cron_schedule makes (H: `h`, `*/n` or `a-23/n`) over one UTC day."""
    minute, hours, *rest = cron.split()
    assert rest == ["*", "*", "*"]
    if hours.startswith("*/"):
        hour_list = range(0, 24, int(hours[2:]))
    elif "-" in hours:
        first, step = re.fullmatch(r"(\d+)-23/(\d+)", hours).groups()
        hour_list = range(int(first), 24, int(step))
    else:
        hour_list = [int(hours)]
    return [day + h * 3600 + int(minute) * 60 for h in hour_list]


@pytest.mark.parametrize("every", [4, 6, 8, 12, 24])
@pytest.mark.parametrize("settle", [0, 15, 59, 60, 61, 200, 24 * 60 + 15])
def test_scheduled_launches_export_each_window_once(every, settle):
    """Fired by the cron and run without --run_timestamp (SPEC section 2: now minus the settle delay,
    floored to the period), the launches of a day export consecutive windows, each once."""
    day = 1795737600  # 2026-11-27T00:00:00Z
    times = fire_times(schedule.cron_schedule(every, settle), day)
    assert len(times) == 24 // every
    for launch_delay in (0, 95, 3599):  # the launcher VM starts seconds to minutes after the trigger
        ends = [default_run_timestamp("recurring", every, settle, t + launch_delay) for t in times]
        assert ends == sorted(set(ends))
        assert [b - a for a, b in zip(ends, ends[1:], strict=False)] == [every * 3600] * (len(ends) - 1)
        assert all(
            t - settle * 60 - every * 3600 < end <= t - settle * 60
            for t, end in zip(times, ends, strict=True)
        )


def test_dataflow_job_name_is_fixed_per_request_and_valid():
    ids = ["1732700000_a1b2c3", "Rec_1", "rec_1", "rec1", "REC1", "a", "_", "x" * 600]
    names = [schedule.dataflow_job_name(i) for i in ids]
    assert names == [schedule.dataflow_job_name(i) for i in ids], "the same every time"
    assert len(set(names)) == len(names), "distinct requests, distinct names"
    for name in names:
        assert JOB_NAME_RE.match(name) and len(name) < 300, name
    assert schedule.dataflow_job_name("rec1") == "ctexport-rec1"


# ---- the job, through the client libraries' own types -------------------------------------------------------


def test_dry_run_job_is_a_valid_scheduler_job_launching_the_flex_template(capsys, tmp_path):
    req = recurring()
    status, out, err = dry_run(
        capsys, tmp_path, req, "--service-account", "runner@my-project.iam.gserviceaccount.com"
    )
    assert status == 0, err
    # Cloud Scheduler's own types: unknown or mistyped fields fail here.
    job = scheduler_v1.Job.from_json(out, ignore_unknown_fields=False)
    create = scheduler_v1.CreateJobRequest(parent="projects/my-project/locations/europe-west1", job=job)
    assert (
        scheduler_v1.CreateJobRequest.deserialize(scheduler_v1.CreateJobRequest.serialize(create)) == create
    )
    assert job.name == "projects/my-project/locations/europe-west1/jobs/ctexport-1732700000_a1b2c3"
    assert job.schedule == "20 */6 * * *" and job.time_zone == "UTC"
    target = job.http_target
    assert target.uri == (
        "https://dataflow.googleapis.com/v1b3/projects/my-project/locations/europe-west1/flexTemplates:launch"
    )
    assert target.http_method == scheduler_v1.HttpMethod.POST
    assert target.headers["Content-Type"] == "application/json"
    assert target.oauth_token.service_account_email == "runner@my-project.iam.gserviceaccount.com"
    assert target.oauth_token.scope == "https://www.googleapis.com/auth/cloud-platform"
    assert not target.oidc_token.service_account_email
    # Retries of a refused launch stay within half the period: they still compute the same window.
    assert job.retry_config.retry_count >= 3
    assert timedelta(0) < job.retry_config.max_retry_duration <= timedelta(hours=6) / 2
    # The body, through Dataflow's own LaunchFlexTemplateRequest (what the REST endpoint takes).
    launch = dataflow_v1beta3.LaunchFlexTemplateRequest.from_json(target.body, ignore_unknown_fields=False)
    lp = launch.launch_parameter
    assert lp.container_spec_gcs_path == TEMPLATE
    assert lp.job_name == schedule.dataflow_job_name(req["request_id"]) and JOB_NAME_RE.match(lp.job_name)
    assert lp.environment.service_account_email == "runner@my-project.iam.gserviceaccount.com"
    assert lp.environment.temp_location == "gs://my-project-ctexport/dataflow/temp"
    assert lp.environment.staging_location == "gs://my-project-ctexport/dataflow/staging"
    assert not launch.validate_only
    # The same body as the printed JSON, base64 as the REST API carries bytes.
    assert json.loads(base64.b64decode(json.loads(out)["httpTarget"]["body"])) == json.loads(target.body)


def test_launch_parameters_pass_the_template_and_reproduce_the_request(capsys, tmp_path):
    req = recurring()
    status, out, err = dry_run(capsys, tmp_path, req)
    assert status == 0, err
    body = json.loads(scheduler_v1.Job.from_json(out).http_target.body)
    parameters = body["launchParameter"]["parameters"]
    declared = metadata_params()
    assert set(parameters) <= set(declared), "the template accepts only its declared parameters"
    for name, p in declared.items():
        if not p["isOptional"]:
            assert name in parameters, f"required parameter {name} missing"
    for name, value in parameters.items():
        assert isinstance(value, str)
        assert all(re.match(rx, value) for rx in declared[name]["regexes"]), (name, value)
    assert "run_timestamp" not in parameters and "start" not in parameters and "end" not in parameters
    # A launch at any moment runs what `ctexport tick` runs for the window due then: the same request.
    now = 1795780800 + 7 * 60  # 2026-11-27T12:07Z
    launched, _ = validate(
        PipelineOptions([f"--{k}={v}" for k, v in parameters.items()]), now=now, check_storage=False
    )
    run_ts = format_run_timestamp(default_run_timestamp("recurring", 6, 20, now))
    assert run_ts == "20261127060000"
    ticked, _ = validate(PipelineOptions(runs.pipeline_argv(req, run_ts)), now=now, check_storage=False)
    assert launched == ticked
    assert launched.events == ("Charged", "Size, Colour Chosen") and launched.csv_formula_guard is True


def test_the_example_files_are_what_schedule_prints(capsys):
    """templates/scheduler-job.example.json is `ctexport schedule --dry-run` of templates/request.example.json."""
    request = str(ROOT / "templates" / "request.example.json")
    rid = json.loads(Path(request).read_text())["request_id"]
    argv = [rid, *PLACE, "--request-json", request, "--max-workers", "20", "--dry-run"]
    assert schedule.schedule_main(argv) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == json.loads((ROOT / "templates" / "scheduler-job.example.json").read_text())


def test_schedule_reads_the_request_from_the_state(capsys, tmp_path):
    req = recurring(request_id="1732700000_ffffff")
    store = state.open_state(str(tmp_path / "state"))
    assert store.create(state.request_name(req["request_id"]), req) is not None
    argv = [req["request_id"], *PLACE, "--state", str(tmp_path / "state"), "--dry-run"]
    assert schedule.schedule_main(argv) == 0
    job = scheduler_v1.Job.from_json(capsys.readouterr().out)
    assert job.name.endswith("/jobs/ctexport-1732700000_ffffff")
    assert (
        schedule.schedule_main(["1732700000_000000", *PLACE, "--state", str(tmp_path / "state"), "--dry-run"])
        == 2
    )
    assert "no request '1732700000_000000'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"frequency": "once", "every_hours": None, "run_timestamp": "20241127093320"},
            "is a one-time export",
        ),
        ({"stopped": "2024-11-28T00:00:00Z"}, "is stopped"),
        ({"output": "/home/me/exports"}, "output '/home/me/exports' is not in Cloud Storage"),
        ({"source": "gs://a/x.jsonl,./local/*.jsonl"}, "source './local/*.jsonl' is not in Cloud Storage"),
        ({"every_hours": 5}, "--every_hours 5 is not valid"),
        ({"format": "yaml"}, "--format 'yaml' is not valid"),
        ({"database_id": "W4R 565"}, "--database_id is required"),
    ],
)
def test_schedule_refuses_what_cannot_run_on_a_schedule(capsys, tmp_path, changes, message):
    status, out, err = dry_run(capsys, tmp_path, recurring(**changes))
    assert status == 2 and out == ""
    assert message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--project", "My Project"], "--project 'My Project' is not a project id"),
        (["--region", "Europe"], "--region 'Europe' is not a region name"),
        (["--template", "/tmp/t.json"], "--template '/tmp/t.json' is not a gs:// location"),
        (["--service-account", "me@example.com"], "is not a service account email"),
    ],
)
def test_schedule_refuses_bad_places(capsys, tmp_path, flags, message):
    status, out, err = dry_run(capsys, tmp_path, recurring(), *flags)
    assert status == 2 and message in err, err


def test_key_file_requests_are_told_the_job_runs_as_its_service_account(capsys, tmp_path):
    status, _, err = dry_run(capsys, tmp_path, recurring(key_file="/home/me/key.json"))
    assert status == 0
    assert "key file is not used on Dataflow" in err and "ctexport@my-project.iam.gserviceaccount.com" in err
    assert "/home/me/key.json" not in err


# ---- calling Google (a fake client: tests never reach the network) ------------------------------------------


class FakeClient:
    def __init__(self, *errors):
        self.calls = []
        self.errors = list(errors)

    def _call(self, method, **kwargs):
        self.calls.append((method, kwargs))
        if self.errors:
            error = self.errors.pop(0)
            if error is not None:
                raise error

    def create_job(self, **kwargs):
        self._call("create_job", **kwargs)

    def update_job(self, **kwargs):
        self._call("update_job", **kwargs)

    def delete_job(self, **kwargs):
        self._call("delete_job", **kwargs)


def schedule_with(client, tmp_path) -> int:
    req = recurring()
    argv = [req["request_id"], *PLACE, "--request-json", write_request(tmp_path, req)]
    return schedule.schedule_main(argv, client=client)


def test_schedule_creates_the_job(capsys, tmp_path):
    client = FakeClient()
    assert schedule_with(client, tmp_path) == 0
    [(method, kwargs)] = client.calls
    assert method == "create_job" and kwargs["parent"] == "projects/my-project/locations/europe-west1"
    assert isinstance(kwargs["job"], scheduler_v1.Job) and kwargs["job"].schedule == "20 */6 * * *"
    out = capsys.readouterr().out
    assert out.startswith("created Cloud Scheduler job projects/my-project/locations/europe-west1/jobs/")
    assert "console.cloud.google.com/dataflow/jobs?project=my-project" in out


def test_schedule_updates_an_existing_job(capsys, tmp_path):
    client = FakeClient(AlreadyExists("exists"), None)
    assert schedule_with(client, tmp_path) == 0
    assert [m for m, _ in client.calls] == ["create_job", "update_job"]
    update = client.calls[1][1]
    assert "http_target" in update["update_mask"].paths and "schedule" in update["update_mask"].paths
    assert capsys.readouterr().out.startswith("updated Cloud Scheduler job")


def test_schedule_reports_googles_refusal_in_one_line(capsys, tmp_path):
    client = FakeClient(PermissionDenied("cloudscheduler.jobs.create denied"))
    assert schedule_with(client, tmp_path) == 1
    err = capsys.readouterr().err
    assert err == "ctexport: Cloud Scheduler refused: 403 cloudscheduler.jobs.create denied\n"


def test_unschedule_deletes_the_job(capsys):
    client = FakeClient()
    argv = ["1732700000_a1b2c3", "--project", "my-project", "--region", "europe-west1"]
    assert schedule.unschedule_main(argv, client=client) == 0
    assert client.calls == [
        ("delete_job", {"name": "projects/my-project/locations/europe-west1/jobs/ctexport-1732700000_a1b2c3"})
    ]
    assert capsys.readouterr().out.startswith("deleted Cloud Scheduler job")
    assert schedule.unschedule_main(argv, client=FakeClient(NotFound("no job"))) == 0
    assert "nothing to delete" in capsys.readouterr().out
    assert schedule.unschedule_main(argv + ["--dry-run"]) == 0
    name = json.loads(capsys.readouterr().out)["name"]
    assert scheduler_v1.DeleteJobRequest(name=name).name.endswith("/jobs/ctexport-1732700000_a1b2c3")
    assert schedule.unschedule_main(["bad-id", "--project", "my-project", "--region", "europe-west1"]) == 2


def test_cli_routes_schedule_and_unschedule():
    from ctexport import cli

    assert cli.COMMANDS["schedule"] == ("ctexport.schedule", "schedule_main")
    assert cli.COMMANDS["unschedule"] == ("ctexport.schedule", "unschedule_main")


# ---- what a scheduled launch exports -------------------------------------------------------------------------


@pytest.mark.pipeline
def test_a_scheduled_launch_exports_the_settled_window_once(tmp_path, capsys):
    """The launch body holds no run timestamp: at 12:22 a 6-hour request settling 20 minutes exports
    capturedAt in [06:00, 12:00), named 20261127120000; a second launch in the same period finds the manifest
    and writes nothing."""
    day = 1795737600  # 2026-11-27T00:00:00Z
    data = tmp_path / "events"
    data.mkdir()
    lines = list(generate.generate_events(400, seed=9, start_ts=day, end_ts=day + 86400, profiles=40))
    generate.write_jsonl(data / "events-0.jsonl", lines)
    req = recurring(
        events=None, source=f"{data}/*.jsonl", output=str(tmp_path / "out"), timezone="UTC", compression=None
    )
    argv = [f"--{k}={v}" for k, v in schedule.launch_parameters(req).items()]
    first = day + 12 * 3600 + 22 * 60
    assert run(argv, now=first) == 0
    out = capsys.readouterr().out
    manifest_path = tmp_path / "out" / naming.manifest_name(req["request_id"], "20261127120000")
    manifest = json.loads(manifest_path.read_bytes())
    assert manifest["window"] == {
        "field": "capturedAt",
        "start": "2026-11-27T06:00:00Z",
        "end": "2026-11-27T12:00:00Z",
    }
    captured = [
        r
        for r in map(generate._parse, lines)
        if r and generate.good_event(r) and day + 6 * 3600 <= r.get("capturedAt", r["ts"]) < day + 12 * 3600
    ]
    assert manifest["totals"]["exported"] == len(captured) > 0
    assert "Done: request 1732700000_a1b2c3 run 20261127120000" in out
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    # Cloud Scheduler retries, or a doubled trigger, later in the same period: already exported.
    assert run(argv, now=first + 3 * 3600) == 0
    assert "already exported" in capsys.readouterr().out
    after = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert after == before
    assert datetime.fromtimestamp(first, UTC).strftime("%H:%M") == "12:22"
