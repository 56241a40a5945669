"""`ctexport credentials check` and `ctexport destinations`: each check failing for its own reason, with its
message and remedy, and never a byte of key material in the output or the saved state.

Keys are generated here. Their token_uri points at a local OAuth token endpoint that verifies the signed JWT
against the keys it knows (an unknown key is refused, as Google refuses a deleted one), so google-auth runs
its real token flow offline. GCS calls go to the session's fake-gcs-server, through a small proxy that can
deny an operation (the emulator has no IAM) and records the bearer tokens it sees.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ctexport import credentials, requests_cli, state
from ctexport.emulator import Emulator
from ctexport.testing.oauth import TokenServer, new_private_key, service_account_info

pytestmark = pytest.mark.emulator


# ---- a local OAuth token endpoint ---------------------------------------------------------------------------


def _serve(handler_factory, holder) -> tuple[http.server.ThreadingHTTPServer, threading.Thread]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_factory(holder))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return httpd, thread


@pytest.fixture(scope="module")
def token_server():
    with TokenServer() as server:
        yield server


# ---- a proxy in front of the emulator -----------------------------------------------------------------------


@dataclass
class GcsProxy:
    target: str
    deny: list = field(default_factory=list)  # (method, path regex, message)
    auth: list = field(default_factory=list)  # Authorization headers seen


def _proxy_handler(proxy: GcsProxy):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(code)
            for k, v in headers:
                if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _forward(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            proxy.auth.append(self.headers.get("Authorization"))
            path = urllib.parse.urlsplit(self.path).path
            for method, pattern, message in proxy.deny:
                if method == self.command and re.search(pattern, path):
                    err = {"error": {"code": 403, "message": message, "errors": [{"reason": "forbidden"}]}}
                    return self._send(403, [("Content-Type", "application/json")], json.dumps(err).encode())
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            req = urllib.request.Request(proxy.target + self.path, data=body or None, method=self.command)
            for k, v in headers.items():
                req.add_header(k, v)
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    return self._send(resp.status, list(resp.headers.items()), resp.read())
            except urllib.error.HTTPError as e:
                return self._send(e.code, list(e.headers.items()), e.read())

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    return Handler


@pytest.fixture
def gcs(gcs_emulator: Emulator, monkeypatch):
    """The emulator behind a proxy (STORAGE_EMULATOR_HOST points at the proxy for this test)."""
    proxy = GcsProxy(target=gcs_emulator.url)
    httpd, thread = _serve(_proxy_handler, proxy)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{httpd.server_address[1]}")
    yield proxy
    httpd.shutdown()
    thread.join()


# ---- keys ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key():
    return new_private_key()


def key_info(private_key, token_uri: str, **over) -> dict:
    return service_account_info(private_key, token_uri, **over)


def write_key(tmp_path: Path, info: dict | str, name: str = "key.json") -> str:
    path = tmp_path / name
    path.write_text(info if isinstance(info, str) else json.dumps(info, indent=2))
    return str(path)


@pytest.fixture
def good_key(tmp_path, rsa_key, token_server) -> tuple[str, dict]:
    """A key file Google (the local token endpoint) accepts."""
    info = key_info(rsa_key, token_server.url)
    token_server.register(info["private_key_id"], rsa_key)
    return write_key(tmp_path, info), info


def secrets_of(info: dict) -> list[str]:
    """What must never appear: the key id, and every line of the private key's body (and the whole key)."""
    out = [info["private_key_id"], info["private_key"]]
    out += [line for line in info["private_key"].splitlines() if line and not line.startswith("-----")]
    return out


def assert_no_key_material(text: str, info: dict) -> None:
    for secret in secrets_of(info):
        assert secret not in text
        assert json.dumps(secret)[1:-1] not in text  # nor its JSON-escaped form


def run_check(capsys, *argv) -> tuple[int, str, str]:
    status = credentials.main(["check", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def bucket_objects(emulator: Emulator, bucket: str) -> list[str]:
    with urllib.request.urlopen(f"{emulator.url}/storage/v1/b/{bucket}/o") as resp:
        return [o["name"] for o in json.loads(resp.read()).get("items", [])]


# ---- credentials check --------------------------------------------------------------------------------------


def test_valid_key_passes_every_check_with_a_real_token(
    capsys, gcs, gcs_bucket, gcs_emulator, good_key, token_server
):
    key_file, info = good_key
    status, out, err = run_check(capsys, "--key-file", key_file, "--bucket", gcs_bucket)
    assert status == 0, err
    assert out.splitlines()[-1] == (
        f"credentials are valid: {info['client_email']} can write to and delete from gs://{gcs_bucket}"
    )
    for step in (
        "key file is JSON",
        "service-account key",
        "private key parses",
        "Google accepts",
        "bucket exists",
    ):
        assert f"ok  {step}" in out
    assert re.search(rf"wrote and deleted gs://{gcs_bucket}/_ctexport_probe/[0-9a-f]{{32}}", out)
    assert bucket_objects(gcs_emulator, gcs_bucket) == [], "the probe object is deleted"
    # The key's real token flow ran, and the GCS calls carried the token it issued.
    assert token_server.granted[-1] == (info["client_email"], credentials.SCOPES[0])
    bearer = {a.split(" ", 1)[1] for a in gcs.auth if a and a.startswith("Bearer ")}
    assert bearer and bearer <= token_server.tokens
    assert_no_key_material(out + err, info)


def test_probe_goes_under_the_prefix(capsys, gcs, gcs_bucket, good_key):
    key_file, info = good_key
    status, out, err = run_check(capsys, "--key-file", key_file, "--bucket", f"gs://{gcs_bucket}/exports/ct")
    assert status == 0, err
    assert f"gs://{gcs_bucket}/exports/ct/_ctexport_probe/" in out
    assert out.splitlines()[-1].endswith(f"can write to and delete from gs://{gcs_bucket}/exports/ct")


def test_missing_key_file(capsys, tmp_path, gcs_bucket):
    status, out, err = run_check(capsys, "--key-file", str(tmp_path / "nope.json"), "--bucket", gcs_bucket)
    assert status == 1
    assert err.startswith("credentials check failed: key file is JSON: key file ")
    assert "does not exist" in err


def test_not_json(capsys, tmp_path, gcs_bucket, rsa_key, token_server):
    info = key_info(rsa_key, token_server.url)
    text = json.dumps(info, indent=2)[:-40]  # a truncated copy-paste
    status, out, err = run_check(capsys, "--key-file", write_key(tmp_path, text), "--bucket", gcs_bucket)
    assert status == 1
    assert err.startswith("credentials check failed: key file is JSON: ")
    assert "is not JSON (line " in err and "generate a new key" in err
    assert_no_key_material(out + err, info)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"type": "authorized_user"},
            "holds user credentials (type 'authorized_user'), not a service-account key",
        ),
        ({"type": None}, "has no 'type' field"),
        ({"private_key": None, "token_uri": None}, "lacks private_key, token_uri, so it is not a complete"),
        ({"client_email": ""}, "lacks client_email"),
    ],
)
def test_not_a_service_account_key(capsys, tmp_path, gcs_bucket, rsa_key, token_server, change, expected):
    info = key_info(rsa_key, token_server.url)
    broken = {k: v for k, v in {**info, **change}.items() if v is not None}
    status, out, err = run_check(capsys, "--key-file", write_key(tmp_path, broken), "--bucket", gcs_bucket)
    assert status == 1
    assert err.startswith("credentials check failed: service-account key: ")
    assert expected in err and "generate a new key" in err
    assert_no_key_material(out + err, info)


def test_private_key_does_not_parse(capsys, tmp_path, gcs_bucket, rsa_key, token_server):
    info = key_info(rsa_key, token_server.url)
    lines = info["private_key"].splitlines()
    lines[5] = lines[5][::-1]  # an edited key: still PEM-shaped, no longer a key
    info["private_key"] = "\n".join(lines) + "\n"
    status, out, err = run_check(capsys, "--key-file", write_key(tmp_path, info), "--bucket", gcs_bucket)
    assert status == 1
    assert err.startswith("credentials check failed: private key parses: the private key in ")
    assert "does not parse" in err and "generate a new key" in err
    assert "ok  service-account key" in out and "ok  private key" not in out
    assert_no_key_material(out + err, info)


def test_key_google_refuses(capsys, tmp_path, gcs_bucket, token_server):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    info = key_info(other, token_server.url)  # never registered: as if deleted in the console
    status, out, err = run_check(capsys, "--key-file", write_key(tmp_path, info), "--bucket", gcs_bucket)
    assert status == 1
    assert err.startswith(
        "credentials check failed: Google accepts the credentials: Google refused the key of "
    )
    assert "Invalid JWT Signature." in err and "generate a new key" in err
    assert_no_key_material(out + err, info)


def test_bucket_name_in_capitals(capsys, gcs, gcs_bucket, good_key):
    key_file, info = good_key
    wrong = gcs_bucket[:5].upper() + gcs_bucket[5:]
    status, out, err = run_check(capsys, "--key-file", key_file, "--bucket", wrong)
    assert status == 1
    assert err.strip() == (
        f"credentials check failed: bucket exists: bucket {wrong!r} cannot exist: bucket names are lowercase: "
        f"did you mean {gcs_bucket!r}? Ensure that the bucket name is exactly as the one on GCP"
    )
    assert "ok  Google accepts the credentials" in out
    assert_no_key_material(out + err, info)


def test_bucket_name_with_a_typo(capsys, gcs, gcs_emulator, good_key):
    key_file, info = good_key
    real = f"ctexport-exports-{uuid.uuid4().hex[:6]}"
    gcs_emulator.create_bucket(real)
    typo = real.replace("exports", "exprots")
    status, out, err = run_check(capsys, "--key-file", key_file, "--bucket", typo)
    assert status == 1
    assert err.startswith(f"credentials check failed: bucket exists: bucket {typo!r} does not exist")
    assert (
        f"(or exporter@ctexport-test.iam.gserviceaccount.com cannot see it). It looks like a typo of {real!r}."
        in err
    )
    assert err.rstrip().endswith("Ensure that the bucket name is exactly as the one on GCP")
    assert_no_key_material(out + err, info)


def test_bucket_that_does_not_exist_at_all(capsys, gcs, good_key):
    key_file, info = good_key
    status, out, err = run_check(capsys, "--key-file", key_file, "--bucket", f"zz-{uuid.uuid4().hex}")
    assert status == 1
    assert "does not exist" in err and "typo" not in err
    assert "Ensure that the bucket name is exactly as the one on GCP" in err


def test_write_denied(capsys, gcs, gcs_bucket, gcs_emulator, good_key):
    key_file, info = good_key
    gcs.deny.append(
        ("POST", r"^/upload/storage/v1/b/", "exporter does not have storage.objects.create access")
    )
    status, out, err = run_check(capsys, "--key-file", key_file, "--bucket", gcs_bucket)
    assert status == 1
    assert err.startswith("credentials check failed: write and delete an object: ")
    assert "may not write to bucket" in err and "storage.objects.create" in err
    assert "ok  bucket exists" in out
    assert bucket_objects(gcs_emulator, gcs_bucket) == []
    assert_no_key_material(out + err, info)


def test_delete_denied(capsys, gcs, gcs_bucket, gcs_emulator, good_key):
    key_file, info = good_key
    gcs.deny.append(("DELETE", r"/o/", "exporter does not have storage.objects.delete access"))
    status, out, err = run_check(capsys, "--key-file", key_file, "--bucket", gcs_bucket)
    assert status == 1
    assert "may not delete it" in err and "storage.objects.delete" in err
    left = bucket_objects(gcs_emulator, gcs_bucket)
    assert len(left) == 1 and left[0].startswith("_ctexport_probe/") and left[0] in err
    assert_no_key_material(out + err, info)


def test_no_application_default_credentials(capsys, gcs, gcs_bucket):
    # The test session hides every source of ADC (conftest.py), as on a machine never logged in.
    status, out, err = run_check(capsys, "--bucket", gcs_bucket)
    assert status == 1
    assert err.startswith("credentials check failed: Application Default Credentials: no usable")
    assert "gcloud auth application-default login" in err and "--key-file" in err


def test_application_default_credentials_from_a_key(capsys, gcs, gcs_bucket, good_key, monkeypatch):
    key_file, info = good_key
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", key_file)
    status, out, err = run_check(capsys, "--bucket", gcs_bucket)
    assert status == 0, err
    assert out.splitlines()[-1] == (
        f"credentials are valid: {info['client_email']} can write to and delete from gs://{gcs_bucket}"
    )
    assert_no_key_material(out + err, info)


def test_usage_errors_exit_2(capsys):
    assert credentials.main(["check"]) == 2  # --bucket missing
    assert credentials.main(["verify", "--bucket", "b"]) == 2
    capsys.readouterr()


# ---- destinations -------------------------------------------------------------------------------------------


def dest(capsys, *argv) -> tuple[int, str, str]:
    status = requests_cli.destinations_main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def all_state_text(folder: Path) -> str:
    return "\n".join(p.read_text() for p in folder.rglob("*") if p.is_file())


def test_destination_saved_only_after_the_check_passes(capsys, tmp_path, gcs, gcs_bucket, good_key):
    key_file, info = good_key
    st = tmp_path / "state"
    status, out, err = dest(
        capsys, "add", "warehouse", "--bucket", gcs_bucket.upper(), "--key-file", key_file, "--state", str(st)
    )
    assert status == 1 and "bucket names are lowercase" in err and "was not saved" in err
    assert state.open_state(str(st)).list("destinations/") == []

    status, out, err = dest(
        capsys,
        "add",
        "warehouse",
        "--bucket",
        gcs_bucket,
        "--prefix",
        "ct/exports",
        "--key-file",
        key_file,
        "--state",
        str(st),
    )
    assert status == 0, err
    assert out.splitlines()[-1] == f"saved destination warehouse: gs://{gcs_bucket}/ct/exports"
    saved = json.loads((st / "destinations" / "warehouse.json").read_text())
    assert saved["bucket"] == gcs_bucket and saved["prefix"] == "ct/exports"
    assert saved["key_file"] == key_file and saved["principal"] == info["client_email"]
    assert_no_key_material(out + err + all_state_text(st), info)

    status, out, err = dest(capsys, "add", "warehouse", "--bucket", gcs_bucket, "--state", str(st))
    assert status == 2 and "exists" in err and "--replace" in err

    status, out, err = dest(capsys, "list", "--json", "--state", str(st))
    assert [d["name"] for d in json.loads(out)] == ["warehouse"]
    status, out, err = dest(capsys, "list", "--state", str(st))
    assert f"gs://{gcs_bucket}/ct/exports" in out and key_file in out


def test_destination_used_by_create(capsys, tmp_path, gcs, gcs_bucket, gcs_emulator, good_key):
    key_file, info = good_key
    st = tmp_path / "state"
    status, _, err = dest(
        capsys,
        "add",
        "wh",
        "--bucket",
        gcs_bucket,
        "--prefix",
        "ct",
        "--key-file",
        key_file,
        "--state",
        str(st),
    )
    assert status == 0, err
    events = tmp_path / "events.jsonl"
    events.write_text(
        "\n".join(
            json.dumps({"eventName": name, "ts": 1795737600 - 3600 * i, "profile": {"identity": f"u{i}"}})
            for i, name in enumerate(["Charged", "App Launched", "Charged"])
        )
        + "\n"
    )
    create = ["--source", str(events), "--days", "2", "--destination", "wh"]
    create += ["--database-id", "W4R-565-5Z4Z", "--state", str(st)]
    status = requests_cli.create_main(create + ["--now", "20261127000000"])
    out, err = capsys.readouterr()
    assert status == 0, err
    request_id = out.splitlines()[-1]
    assert re.fullmatch(r"[A-Za-z0-9_]+", request_id)
    names = bucket_objects(gcs_emulator, gcs_bucket)
    assert f"ct/_manifests/{request_id}-20261127000000-manifest.json" in names
    assert sorted(n for n in names if not n.startswith("ct/_")) == [
        f"ct/{request_id}-20261127000000-App Launched-20261126-0-W4R-565-5Z4Z.json",
        f"ct/{request_id}-20261127000000-Charged-20261126-0-W4R-565-5Z4Z.json",
    ]
    saved = json.loads((st / "requests" / f"{request_id}.json").read_text())
    assert saved["destination"] == "wh" and saved["output"] == f"gs://{gcs_bucket}/ct"
    assert saved["key_file"] == key_file
    assert_no_key_material(out + err + all_state_text(st), info)

    status = requests_cli.destinations_main(["remove", "wh", "--state", str(st)])
    assert status == 0 and not (st / "destinations" / "wh.json").exists()
    status = requests_cli.create_main(create)
    assert status == 2 and "no destination 'wh'" in capsys.readouterr().err
