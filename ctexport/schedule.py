"""`ctexport schedule ID` / `ctexport unschedule ID`: a Cloud Scheduler job that launches the Dataflow flex
template (templates/) for a recurring export request (DESIGN.md "Runners and production", docs/dataflow.md).

The job POSTs a static body to the Dataflow API's `projects/P/locations/R/flexTemplates:launch` with an OAuth
token, on the cron `M H/N * * *` (UTC) that fires each period N hours once the settle delay has passed. The
body carries the request's parameters without `run_timestamp`, so each launch exports the window SPEC
section 2 defines for that moment (now minus the settle delay, floored to the period), and the Dataflow job
name is fixed per request: Dataflow refuses a second launch while one runs, and the pipeline skips a window
whose manifest exists.

`build_job(request, ...)` makes the job from a request dict (the state's `requests/<id>.json`, or any dict
whose keys are the pipeline's flag names); nothing here reaches Google until `schedule_main` calls the client.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys

import orjson

PERIODS = (4, 6, 8, 12, 24)
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
DATAFLOW_API = "https://dataflow.googleapis.com/v1b3"
JOB_PREFIX = "ctexport-"
TIME_ZONE = "UTC"
# Request keys that never reach the launch: a scheduled run computes its own run timestamp and window.
_NOT_LAUNCHED = ("run_timestamp", "start", "end")
_PROJECT_RE = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
_REGION_RE = re.compile(r"^[a-z]+-[a-z]+\d+$")
_SA_RE = re.compile(r"^[^@\s]+@[^@\s]+\.gserviceaccount\.com$")


class Usage(Exception):
    """An invalid command or request: one line saying what to change (exit status 2)."""


# ---- pure: names, cron, launch body, job ---------------------------------------------------------------------


def scheduler_job_id(request_id: str) -> str:
    """Cloud Scheduler job ids allow letters, digits, `-` and `_`: the request id fits as it is."""
    return JOB_PREFIX + request_id


def dataflow_job_name(request_id: str) -> str:
    """The Dataflow job name of every launch of a request: lowercase letters, digits and hyphens.

    The same request always gets the same name, so Dataflow refuses a launch while the previous one runs.
    Request ids may hold capitals and `_`, which a job name cannot: then a digest of the exact id keeps two
    ids that differ only there apart (`Rec_1`, `rec_1`, `rec1`).
    """
    slug = re.sub(r"[^a-z0-9]+", "-", request_id.lower()).strip("-")[:200]
    name = JOB_PREFIX + slug if slug else JOB_PREFIX.rstrip("-")
    if slug != request_id:
        name += "-" + hashlib.sha256(request_id.encode()).hexdigest()[:8]
    return name


def cron_schedule(every_hours: int, settle_minutes: int) -> str:
    """Unix cron for the moments windows settle: every `every_hours` from midnight UTC, offset by the settle
    delay (`15 */4 * * *` for 4 hours and 15 minutes). A delay of a period or more fires at the same offset
    within the period: the run still exports the window that settled last."""
    if every_hours not in PERIODS:
        raise Usage(f"every_hours {every_hours} is not a period: use one of {', '.join(map(str, PERIODS))}")
    offset = settle_minutes % (every_hours * 60)
    hour, minute = divmod(offset, 60)
    if every_hours == 24:
        return f"{minute} {hour} * * *"
    hours = f"*/{every_hours}" if hour == 0 else f"{hour}-23/{every_hours}"
    return f"{minute} {hours} * * *"


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return orjson.dumps(list(value)).decode()  # a JSON array: event names may hold commas
    return str(value)


def launch_parameters(request: dict) -> dict[str, str]:
    """The template parameters of a scheduled launch: every pipeline flag the request sets, as text, without
    the run timestamp and one-time window (the run computes them). Keys are the flag names of
    pipelines/options.py, which templates/metadata.json declares one to one."""
    from pipelines.options import ExportOptions

    parser = argparse.ArgumentParser()
    ExportOptions._add_argparse_args(parser)
    params = {}
    for action in parser._actions:
        name = action.dest
        if name == "help" or name in _NOT_LAUNCHED:
            continue
        value = request.get(name)
        if value is None or value == [] or value == "":
            continue
        params[name] = _text(value)
    return params


def check_request(request: dict) -> None:
    """Raise Usage unless the request can run on a schedule on Dataflow, with the pipeline's own validation."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.options import InvalidRequest, validate

    rid = request.get("request_id") or "?"
    if request.get("frequency") != "recurring":
        raise Usage(
            f"request {rid} is a one-time export: Cloud Scheduler launches recurring requests "
            "(run a one-time export once with `gcloud dataflow flex-template run`, docs/dataflow.md)"
        )
    if request.get("stopped"):
        raise Usage(f"request {rid} is stopped: create a new recurring request to schedule")
    for flag in ("source", "output"):
        urls = [u.strip() for u in str(request.get(flag) or "").split(",") if u.strip()]
        local = [u for u in urls if not u.startswith("gs://")]
        if local:
            raise Usage(
                f"request {rid}: {flag} {local[0]!r} is not in Cloud Storage; Dataflow workers read and "
                "write gs:// only"
            )
    params = launch_parameters(request)
    argv = [f"--{k}={v}" for k, v in params.items()]
    try:
        validate(PipelineOptions(argv), check_storage=False)
    except InvalidRequest as e:
        raise Usage(f"request {rid} is not valid: " + "; ".join(e.problems)) from None


def _gcs_prefix(url: str, what: str) -> str:
    if not url.startswith("gs://") or len(url.rstrip("/")) <= len("gs://"):
        raise Usage(f"{what} {url!r} is not a gs:// location")
    return url.rstrip("/")


def launch_body(
    request: dict,
    template: str,
    service_account: str,
    temp_location: str | None = None,
    max_workers: int | None = None,
) -> dict:
    """The JSON body of `flexTemplates:launch` (LaunchFlexTemplateRequest without project and location)."""
    template = _gcs_prefix(template, "--template")
    bucket = template[len("gs://") :].split("/", 1)[0]
    work = _gcs_prefix(temp_location, "--temp-location") if temp_location else f"gs://{bucket}/dataflow"
    environment = {
        "serviceAccountEmail": service_account,
        "tempLocation": f"{work}/temp",
        "stagingLocation": f"{work}/staging",
        "additionalUserLabels": {
            "ctexport-request": re.sub(r"[^a-z0-9_-]", "-", request["request_id"].lower())[:63]
        },
    }
    if max_workers:
        environment["maxWorkers"] = int(max_workers)
    return {
        "launchParameter": {
            "jobName": dataflow_job_name(request["request_id"]),
            "containerSpecGcsPath": template,
            "parameters": launch_parameters(request),
            "environment": environment,
        }
    }


def default_service_account(project: str) -> str:
    """The service account docs/dataflow.md creates: `ctexport@PROJECT.iam.gserviceaccount.com`."""
    return f"ctexport@{project}.iam.gserviceaccount.com"


def job_name(project: str, region: str, request_id: str) -> str:
    return f"projects/{project}/locations/{region}/jobs/{scheduler_job_id(request_id)}"


def build_job(
    request: dict,
    project: str,
    region: str,
    template: str,
    service_account: str | None = None,
    caller_service_account: str | None = None,
    temp_location: str | None = None,
    max_workers: int | None = None,
):
    """The Cloud Scheduler job (google.cloud.scheduler_v1.Job) that launches `request` on its schedule.

    `service_account` runs the Dataflow launcher and workers; `caller_service_account` (default: the same)
    is the identity whose OAuth token Cloud Scheduler sends to the Dataflow API.
    """
    from google.cloud import scheduler_v1
    from google.protobuf import duration_pb2

    check_request(request)
    if not _PROJECT_RE.match(project):
        raise Usage(f"--project {project!r} is not a project id (6 to 30 lowercase letters, digits, hyphens)")
    if not _REGION_RE.match(region):
        raise Usage(f"--region {region!r} is not a region name (for example europe-west1)")
    service_account = service_account or default_service_account(project)
    caller = caller_service_account or service_account
    for flag, sa in (("--service-account", service_account), ("--caller-service-account", caller)):
        if not _SA_RE.match(sa):
            raise Usage(
                f"{flag} {sa!r} is not a service account email (NAME@PROJECT.iam.gserviceaccount.com)"
            )
    every, settle = int(request["every_hours"]), int(request.get("settle_minutes", 15))
    body = launch_body(request, template, service_account, temp_location, max_workers)
    rid = request["request_id"]
    return scheduler_v1.Job(
        name=job_name(project, region, rid),
        description=(
            f"ctexport recurring export {rid}: every {every} h, {settle} min after each window closes "
            f"(Dataflow job {body['launchParameter']['jobName']})"
        ),
        schedule=cron_schedule(every, settle),
        time_zone=TIME_ZONE,
        http_target=scheduler_v1.HttpTarget(
            uri=f"{DATAFLOW_API}/projects/{project}/locations/{region}/flexTemplates:launch",
            http_method=scheduler_v1.HttpMethod.POST,
            headers={"Content-Type": "application/json"},
            body=orjson.dumps(body, option=orjson.OPT_SORT_KEYS),
            oauth_token=scheduler_v1.OAuthToken(service_account_email=caller, scope=SCOPE),
        ),
        # A refused launch call is retried for up to half the period, while it still computes the same window:
        # a 5xx or quota error, or a 409 because the previous run (same job name) is still going. A retry
        # whose window is done exits at once ("already exported").
        retry_config=scheduler_v1.RetryConfig(
            retry_count=5,
            max_retry_duration=duration_pb2.Duration(seconds=every * 3600 // 2),
            min_backoff_duration=duration_pb2.Duration(seconds=300),
            max_backoff_duration=duration_pb2.Duration(seconds=3600),
            max_doublings=3,
        ),
        attempt_deadline=duration_pb2.Duration(seconds=180),
    )


def job_json(job) -> str:
    """The job as the Cloud Scheduler REST API spells it (the body is base64, as the API carries bytes)."""
    from google.cloud import scheduler_v1

    return scheduler_v1.Job.to_json(
        job, use_integers_for_enums=False, including_default_value_fields=False, indent=2
    )


def decoded_body(job) -> dict:
    return orjson.loads(job.http_target.body)


# ---- reading the request ------------------------------------------------------------------------------------


def load_request(request_id: str, state_url: str | None = None, request_json: str | None = None) -> dict:
    """The request from a JSON file (a request dict), or from the state store (`ctexport create`)."""
    if request_json:
        try:
            with open(request_json, "rb") as f:
                request = orjson.loads(f.read())
        except (OSError, orjson.JSONDecodeError) as e:
            raise Usage(f"--request-json {request_json}: cannot read a JSON object ({e})") from None
        if not isinstance(request, dict):
            raise Usage(f"--request-json {request_json}: expected a JSON object")
        if request.get("request_id", request_id) != request_id:
            raise Usage(
                f"--request-json {request_json} holds request {request['request_id']}, not {request_id}"
            )
        return {**request, "request_id": request_id}
    from ctexport import runs, state

    store = state.open_state(state_url)
    request = runs.get_request(store, request_id)
    if request is None:
        raise Usage(f"no request {request_id!r} in {store.display()}: see `ctexport activity`")
    return request


# ---- commands -----------------------------------------------------------------------------------------------


def _schedule_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ctexport schedule",
        description="Create (or update) the Cloud Scheduler job that launches the Dataflow flex template for a "
        "recurring export request on its period, in UTC. See docs/dataflow.md.",
    )
    p.add_argument("request_id", metavar="ID", help="the recurring export request")
    p.add_argument(
        "--project", required=True, help="the Google Cloud project of Dataflow and Cloud Scheduler"
    )
    p.add_argument("--region", required=True, help="where the Dataflow jobs and the scheduler job live")
    p.add_argument(
        "--template", required=True, help="the flex template spec, gs://BUCKET/templates/ctexport.json"
    )
    p.add_argument(
        "--service-account",
        help="the account the Dataflow launcher and workers run as (default: ctexport@PROJECT.iam.gserviceaccount.com)",
    )
    p.add_argument(
        "--caller-service-account",
        help="the account whose OAuth token Cloud Scheduler sends to the Dataflow API (default: --service-account)",
    )
    p.add_argument(
        "--temp-location",
        help="gs:// prefix for Dataflow's temp/ and staging/ files (default: gs://TEMPLATE_BUCKET/dataflow)",
    )
    p.add_argument("--max-workers", type=int, help="the most Dataflow workers a run may use")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--state", help="where `ctexport create` keeps requests (default: $CTEXPORT_STATE)")
    source.add_argument("--request-json", help="read the request from this JSON file instead of the state")
    p.add_argument("--dry-run", action="store_true", help="print the job as JSON; do not call Google")
    return p


def _parse(parser: argparse.ArgumentParser, argv: list[str]):
    try:
        return parser.parse_args(argv), None
    except SystemExit as e:  # --help (0) or a usage error (2, already printed)
        return None, int(e.code or 0)


def schedule_main(argv: list[str], client=None) -> int:
    """Exit status: 0 scheduled (or printed), 1 Google refused, 2 invalid command or request."""
    args, status = _parse(_schedule_parser(), argv)
    if args is None:
        return status
    try:
        request = load_request(args.request_id, args.state, args.request_json)
        job = build_job(
            request,
            args.project,
            args.region,
            args.template,
            args.service_account,
            args.caller_service_account,
            args.temp_location,
            args.max_workers,
        )
    except Usage as e:
        print(f"ctexport: {e}", file=sys.stderr)
        return 2
    if request.get("key_file"):
        print(
            "ctexport: note: the request's key file is not used on Dataflow; the job runs as "
            f"{decoded_body(job)['launchParameter']['environment']['serviceAccountEmail']}, which needs "
            "access to its buckets (docs/dataflow.md)",
            file=sys.stderr,
        )
    if args.dry_run:
        print(job_json(job))
        return 0

    def call(client):
        from google.api_core.exceptions import AlreadyExists

        parent = job.name.rsplit("/jobs/", 1)[0]
        try:
            client.create_job(parent=parent, job=job)
            return "created"
        except AlreadyExists:
            from google.protobuf import field_mask_pb2

            fields = [
                "description",
                "schedule",
                "time_zone",
                "http_target",
                "retry_config",
                "attempt_deadline",
            ]
            client.update_job(job=job, update_mask=field_mask_pb2.FieldMask(paths=fields))
            return "updated"

    done = _with_client(client, call)
    if isinstance(done, int):
        return done
    launch = decoded_body(job)["launchParameter"]
    print(
        f"{done} Cloud Scheduler job {job.name}: `{job.schedule}` UTC launches {launch['containerSpecGcsPath']} "
        f"as Dataflow job {launch['jobName']}"
    )
    print(
        f"runs: https://console.cloud.google.com/dataflow/jobs?project={args.project} "
        f"(label ctexport-request); triggers: https://console.cloud.google.com/cloudscheduler?project={args.project}"
    )
    return 0


def _unschedule_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ctexport unschedule",
        description="Delete the Cloud Scheduler job of a request (runs already launched go on).",
    )
    p.add_argument("request_id", metavar="ID", help="the request whose scheduler job to delete")
    p.add_argument("--project", required=True, help="the Google Cloud project")
    p.add_argument("--region", required=True, help="the region of the scheduler job")
    p.add_argument("--dry-run", action="store_true", help="print the job name to delete; do not call Google")
    return p


def unschedule_main(argv: list[str], client=None) -> int:
    """Exit status: 0 deleted (or absent already), 1 Google refused, 2 invalid command."""
    from pipelines.options import REQUEST_ID_RE

    args, status = _parse(_unschedule_parser(), argv)
    if args is None:
        return status
    if not REQUEST_ID_RE.match(args.request_id):
        print(f"ctexport: {args.request_id!r} is not a request id (letters, digits and _)", file=sys.stderr)
        return 2
    name = job_name(args.project, args.region, args.request_id)
    if args.dry_run:
        print(orjson.dumps({"name": name}).decode())
        return 0

    def call(client):
        from google.api_core.exceptions import NotFound

        try:
            client.delete_job(name=name)
            return "deleted"
        except NotFound:
            return "absent"

    done = _with_client(client, call)
    if isinstance(done, int):
        return done
    if done == "absent":
        print(f"no Cloud Scheduler job {name}: nothing to delete")
    else:
        print(f"deleted Cloud Scheduler job {name}; runs already launched go on")
    return 0


def _with_client(client, call):
    """Run `call(client)` with a real client unless one is given; Google's refusal becomes one line, exit 1."""
    from google.api_core.exceptions import GoogleAPICallError
    from google.auth.exceptions import DefaultCredentialsError

    try:
        if client is None:
            from google.cloud import scheduler_v1

            client = scheduler_v1.CloudSchedulerClient()
        return call(client)
    except DefaultCredentialsError:
        print(
            "ctexport: no Google credentials: run `gcloud auth application-default login` or set "
            "GOOGLE_APPLICATION_CREDENTIALS",
            file=sys.stderr,
        )
        return 1
    except GoogleAPICallError as e:
        print(f"ctexport: Cloud Scheduler refused: {e.code} {e.message}", file=sys.stderr)
        return 1
