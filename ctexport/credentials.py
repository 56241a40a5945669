"""`ctexport credentials check`: is this service-account key (or Application Default Credentials) able to
export to this bucket? The checks of SPEC section 5, in order, each saying what failed and what to do:

    1. the key file is JSON
    2. it is a service-account key (type, client_email, private_key, token_uri)
    3. its private key parses
    4. Google accepts it (a real OAuth token request to the key's token_uri)
    5. the bucket exists with exactly that name (a name in capitals or a near miss is named as such)
    6. an object can be written and deleted there (a probe under `_ctexport_probe/`)

No part of the private key or its id is ever printed, logged or stored: messages are built from field
names, and any library text that reaches output passes through `Redactor` first.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass

SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
KEY_FIELDS = ("type", "client_email", "private_key", "token_uri")
PROBE_DIR = "_ctexport_probe"
NEW_KEY = (
    "generate a new key (GCP console: IAM & Admin > Service Accounts > the account > Keys > "
    "Add key > Create new key > JSON) and pass the downloaded file"
)
EXACT_NAME = "Ensure that the bucket name is exactly as the one on GCP"
ADC_HELP = (
    "run `gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS to a key file, "
    "or pass --key-file"
)

STEP_JSON = "key file is JSON"
STEP_KEY = "service-account key"
STEP_PRIVATE = "private key parses"
STEP_ACCEPTED = "Google accepts the credentials"
STEP_ADC = "Application Default Credentials"
STEP_BUCKET = "bucket exists"
STEP_WRITE = "write and delete an object"


class CheckFailed(Exception):
    """One check failed: `step` names it, the message says what is wrong and what to do."""

    def __init__(self, step: str, message: str):
        super().__init__(message)
        self.step = step
        self.message = message


class Redactor:
    """Removes key material (the private key, each line of its body, the key id) from text."""

    def __init__(self, secrets: list[str] | None = None):
        self._secrets: list[str] = []
        for s in secrets or []:
            self.add(s)

    def add(self, secret: object) -> None:
        if not isinstance(secret, str) or not secret.strip():
            return
        self._secrets.append(secret)
        for line in secret.replace("\\n", "\n").splitlines():
            line = line.strip()
            if len(line) >= 8 and not line.startswith("-----"):
                self._secrets.append(line)
        self._secrets.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "[redacted]")
        return text


@dataclass
class CheckResult:
    principal: str  # the service account's email, or what Application Default Credentials are
    location: str  # gs://bucket[/prefix]


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_key(path: str, redact: Redactor, say: Callable[[str], None] = lambda line: None) -> dict:
    """Checks 1-3 on a key file, saying each that passes; returns the key's fields. Raises CheckFailed."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise CheckFailed(
            STEP_JSON, f"key file {path!r} does not exist: give the path of the JSON key you downloaded"
        ) from None
    except IsADirectoryError:
        raise CheckFailed(STEP_JSON, f"{path!r} is a folder: give the path of the JSON key file") from None
    except OSError as e:
        raise CheckFailed(
            STEP_JSON, f"key file {path!r} cannot be read ({e.strerror}): fix its permissions"
        ) from None
    try:
        info = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise CheckFailed(STEP_JSON, f"{path!r} is not JSON (not UTF-8 text): {NEW_KEY}") from None
    except json.JSONDecodeError as e:  # its message holds a position, never the document
        raise CheckFailed(
            STEP_JSON,
            f"{path!r} is not JSON (line {e.lineno}, column {e.colno}): pass the key file as downloaded, "
            f"unedited, or {NEW_KEY}",
        ) from None
    if not isinstance(info, dict):
        raise CheckFailed(STEP_JSON, f"{path!r} holds JSON but not an object: {NEW_KEY}")
    redact.add(info.get("private_key"))
    redact.add(info.get("private_key_id"))
    say(f"ok  {STEP_JSON}")

    kind = info.get("type")
    if kind != "service_account":
        if kind == "authorized_user":
            what = "holds user credentials (type 'authorized_user'), not a service-account key"
        elif kind is None:
            what = "has no 'type' field, so it is not a service-account key"
        else:
            what = f"is not a service-account key (its type is {_short(kind)}, expected 'service_account')"
        raise CheckFailed(STEP_KEY, f"{path!r} {what}: {NEW_KEY}")
    missing = [k for k in KEY_FIELDS if not isinstance(info.get(k), str) or not info[k].strip()]
    if missing:
        raise CheckFailed(
            STEP_KEY,
            f"{path!r} lacks {', '.join(missing)}, so it is not a complete service-account key: {NEW_KEY}",
        )
    say(f"ok  {STEP_KEY} for {info['client_email']}")

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        private = serialization.load_pem_private_key(info["private_key"].encode("utf-8"), password=None)
    except Exception:  # its text is not shown: it could quote the key
        raise CheckFailed(
            STEP_PRIVATE,
            f"the private key in {path!r} does not parse (the file was edited or truncated): {NEW_KEY}",
        ) from None
    if not isinstance(private, rsa.RSAPrivateKey):
        raise CheckFailed(
            STEP_PRIVATE, f"the private key in {path!r} is not an RSA key, as Google issues them: {NEW_KEY}"
        )
    say(f"ok  {STEP_PRIVATE}")
    return info


def _refresh(creds, step: str, refused: Callable[[str], str], redact: Redactor) -> None:
    import google.auth.exceptions as gae
    from google.auth.transport.requests import Request

    try:
        creds.refresh(Request())
    except gae.RefreshError as e:
        data = e.args[1] if len(e.args) > 1 and isinstance(e.args[1], dict) else {}
        reason = data.get("error_description") or data.get("error") or (str(e.args[0]) if e.args else "")
        raise CheckFailed(step, redact(refused(str(reason)[:200]))) from None
    except gae.TransportError as e:
        raise CheckFailed(
            step,
            redact(
                f"cannot reach the token endpoint ({type(e).__name__}: {str(e)[:200]}): check the "
                "network and the key's token_uri, then try again"
            ),
        ) from None


def credentials_for(key_file: str | None, redact: Redactor, say: Callable[[str], None]):
    """Checks 1-4 (or ADC and 4): returns (credentials, project, principal)."""
    if key_file is not None:
        info = load_key(key_file, redact, say)
        from google.oauth2 import service_account

        try:
            creds = service_account.Credentials.from_service_account_info(info, scopes=list(SCOPES))
        except Exception as e:
            raise CheckFailed(
                STEP_KEY, redact(f"the key cannot be used ({type(e).__name__}: {str(e)[:200]}): {NEW_KEY}")
            ) from None
        email = info["client_email"]
        _refresh(
            creds,
            STEP_ACCEPTED,
            lambda reason: (
                f"Google refused the key of {email} ({reason}): the key or the account may have been "
                f"deleted or disabled; {NEW_KEY}"
            ),
            redact,
        )
        say(f"ok  {STEP_ACCEPTED}")
        return creds, info.get("project_id"), email

    import google.auth
    import google.auth.exceptions as gae

    try:
        creds, project = google.auth.default(scopes=list(SCOPES))
    except gae.DefaultCredentialsError as e:
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise CheckFailed(
            STEP_ADC, redact(f"no usable Application Default Credentials ({first}): {ADC_HELP}")
        ) from None
    principal = getattr(creds, "service_account_email", None) or "Application Default Credentials"
    say(f"ok  {STEP_ADC} found")
    _refresh(
        creds,
        STEP_ACCEPTED,
        lambda reason: (
            f"Google refused the Application Default Credentials ({reason}): run "
            f"`gcloud auth application-default login` again, or {NEW_KEY}"
        ),
        redact,
    )
    say(f"ok  {STEP_ACCEPTED}")
    return creds, project, principal


def _suggest(client, project: str | None, name: str) -> str:
    """' It looks like a typo of ...' from the project's buckets when listing them is allowed, else ''."""
    from google.api_core import exceptions as gx

    try:
        names = [b.name for b in client.list_buckets(project=project, max_results=1000)]
    except (gx.GoogleAPICallError, ValueError):
        return ""
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.75)
    if not close:
        return ""
    return " It looks like a typo of " + " or ".join(repr(n) for n in close) + "."


def check_bucket(client, project: str | None, bucket: str, principal: str, redact: Redactor) -> None:
    """Check 5: the bucket exists under exactly this name."""
    from google.api_core import exceptions as gx

    if bucket != bucket.lower():
        raise CheckFailed(
            STEP_BUCKET,
            f"bucket {bucket!r} cannot exist: bucket names are lowercase: did you mean {bucket.lower()!r}? "
            f"{EXACT_NAME}",
        )
    try:
        found = client.lookup_bucket(bucket)
    except gx.Forbidden:
        raise CheckFailed(
            STEP_BUCKET,
            f"{principal} may not read bucket {bucket!r} (needs storage.buckets.get): grant it on the bucket "
            f"(for example the role Storage Legacy Bucket Reader), or check the name. {EXACT_NAME}",
        ) from None
    except gx.BadRequest:
        raise CheckFailed(
            STEP_BUCKET,
            f"{bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, '-', '_' and '.'). "
            f"{EXACT_NAME}",
        ) from None
    except gx.GoogleAPICallError as e:
        raise CheckFailed(STEP_BUCKET, redact(f"looking up bucket {bucket!r} failed: {e}")) from None
    if found is None or found.name != bucket:
        raise CheckFailed(
            STEP_BUCKET,
            f"bucket {bucket!r} does not exist (or {principal} cannot see it).{_suggest(client, project, bucket)} "
            f"{EXACT_NAME}",
        )


def check_write(client, bucket: str, prefix: str, principal: str, redact: Redactor) -> str:
    """Check 6: write a probe object and delete it. Returns its gs:// url."""
    from google.api_core import exceptions as gx

    name = "/".join(p for p in (prefix, PROBE_DIR, uuid.uuid4().hex) if p)
    url = f"gs://{bucket}/{name}"
    blob = client.bucket(bucket).blob(name)
    try:
        blob.upload_from_string(
            b"ctexport credentials check\n", content_type="text/plain", if_generation_match=0
        )
    except gx.Forbidden:
        raise CheckFailed(
            STEP_WRITE,
            f"{principal} may not write to bucket {bucket!r} (needs storage.objects.create): grant it on the "
            "bucket (for example the role Storage Object Admin)",
        ) from None
    except gx.GoogleAPICallError as e:
        raise CheckFailed(STEP_WRITE, redact(f"writing {url} failed: {e}")) from None
    try:
        blob.delete()
    except gx.Forbidden:
        raise CheckFailed(
            STEP_WRITE,
            f"{principal} wrote {url} but may not delete it (needs storage.objects.delete, which a retried "
            "export needs to clean up): grant it on the bucket (for example the role Storage Object Admin), "
            "and delete the probe object",
        ) from None
    except gx.NotFound:
        pass
    except gx.GoogleAPICallError as e:
        raise CheckFailed(STEP_WRITE, redact(f"deleting {url} failed: {e}")) from None
    return url


def split_bucket(bucket: str, prefix: str = "") -> tuple[str, str]:
    """Accept `name` or `gs://name/prefix` for --bucket; returns (bucket, prefix) without slashes at the ends."""
    if bucket.startswith("gs://"):
        bucket, _, rest = bucket[len("gs://") :].partition("/")
        prefix = "/".join(p for p in (rest.strip("/"), prefix.strip("/")) if p)
    return bucket.strip(), prefix.strip("/")


def check(
    bucket: str, prefix: str = "", key_file: str | None = None, say: Callable[[str], None] = print
) -> CheckResult:
    """Run every check in order; raises CheckFailed at the first that fails. `say` gets one line per pass."""
    redact = Redactor()
    bucket, prefix = split_bucket(bucket, prefix)
    try:
        creds, project, principal = credentials_for(key_file, redact, say)
        from google.cloud import storage

        client = storage.Client(project=project, credentials=creds)
        project = project or client.project
        check_bucket(client, project, bucket, principal, redact)
        say(f"ok  {STEP_BUCKET}: {bucket}")
        url = check_write(client, bucket, prefix, principal, redact)
        say(f"ok  {STEP_WRITE}: wrote and deleted {url}")
    except CheckFailed:
        raise
    except Exception as e:  # anything unforeseen still says where, and never quotes the key
        raise CheckFailed("unexpected error", redact(f"{type(e).__name__}: {str(e)[:300]}")) from None
    location = f"gs://{bucket}" + (f"/{prefix}" if prefix else "")
    return CheckResult(principal=principal, location=location)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctexport credentials",
        description="Check a service-account key (or Application Default Credentials) against a bucket.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    c = sub.add_parser(
        "check",
        help="check credentials and a bucket",
        description="Checks, in order: the key file is JSON; it is a service-account key; its private key "
        "parses; Google accepts it; the bucket exists with exactly that name; an object can be written and "
        "deleted there. Without --key-file, Application Default Credentials are checked.",
    )
    c.add_argument(
        "--key-file", help="the service-account key (JSON); default: Application Default Credentials"
    )
    c.add_argument(
        "--bucket", required=True, help="the bucket name, exactly as on GCP (or gs://bucket/prefix)"
    )
    c.add_argument(
        "--prefix", default="", help="where under the bucket exports go (the probe is written there)"
    )
    return parser


def run_check(bucket: str, prefix: str, key_file: str | None) -> tuple[int, CheckResult | None]:
    """Check and report on stdout/stderr: (exit status, result)."""
    try:
        result = check(bucket, prefix, key_file, say=lambda line: print(f"  {line}"))
    except CheckFailed as e:
        print(f"credentials check failed: {e.step}: {e.message}", file=sys.stderr)
        return 1, None
    print(f"credentials are valid: {result.principal} can write to and delete from {result.location}")
    return 0, result


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    key_file = os.path.expanduser(args.key_file) if args.key_file else None
    status, _ = run_check(args.bucket, args.prefix, key_file)
    return status
