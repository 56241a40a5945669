"""No key material anywhere: a generated service-account key is checked (`ctexport credentials check`), saved as a
destination, used by `ctexport create` for a real export (with bad records, so dead letters exist) and by a plain
export, and refused in four broken forms. Then everything those commands wrote is scanned: stdout, stderr, every
log record at DEBUG, every object in the bucket with its metadata, manifests, dead letters, the state folder, and
every request the GCS client sent (URLs and headers). No 16-character run of the private key's base64 body, and
no part of its private_key_id, may appear in any of it.

The key's token_uri is a local OAuth endpoint that verifies the signed JWT (google-auth runs its real token flow
offline); GCS calls go to the emulator through a recording proxy (ctexport/testing/fault_proxy.py, no faults).
"""

from __future__ import annotations

import io
import json
import logging
import re
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from ctexport import credentials, generate, requests_cli
from ctexport.testing.fault_proxy import FaultProxy
from ctexport.testing.oauth import TokenServer, new_private_key, service_account_info
from pipelines.export import run

pytestmark = [pytest.mark.emulator, pytest.mark.pipeline]

REPO = Path(__file__).resolve().parent.parent
END = 1795737600  # 2026-11-27T00:00:00Z
WINDOW = 16


# ---- a key and a token endpoint that checks it ----------------------------------------------------------------


def make_key(token_uri: str) -> tuple[dict, object]:
    private = new_private_key()
    return service_account_info(private, token_uri, project="ctexport-secrets"), private


def fragments(info: dict) -> set[str]:
    """Every 16-character run of the private key's base64 body and of its id."""
    body = "".join(x for x in info["private_key"].splitlines() if not x.startswith("-----"))
    out = {body[i : i + WINDOW] for i in range(len(body) - WINDOW + 1)}
    kid = info["private_key_id"]
    return out | {kid[i : i + WINDOW] for i in range(len(kid) - WINDOW + 1)}


def leaks(text: str, secret: set[str]) -> list[str]:
    """Fragments of `secret` in `text`, also once line breaks (real or JSON-escaped) are taken out."""
    found = []
    for t in {text, re.sub(r"\\n|\\r|\n|\r", "", text), text.replace("\\/", "/")}:
        found += [t[i : i + WINDOW] for i in range(len(t) - WINDOW + 1) if t[i : i + WINDOW] in secret]
    return sorted(set(found))


# ---- the run ----------------------------------------------------------------------------------------------------


@pytest.fixture
def everything(tmp_path, gcs_emulator, monkeypatch, capsys) -> dict:
    """Run every command that touches the key; return all they wrote, by where it was found."""
    tokens = TokenServer()
    info, private = make_key(tokens.url)
    tokens.register(info["private_key_id"], private)
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps(info, indent=2))
    bucket = f"secrets-{uuid.uuid4().hex[:12]}"
    gcs_emulator.create_bucket(bucket)
    st = tmp_path / "state"
    events = tmp_path / "events.jsonl"
    generate.write_jsonl(
        events, generate.generate_events(120, seed=4, start_ts=END - 2 * 86400, end_ts=END, bad=6)
    )

    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root, ours = logging.getLogger(), logging.getLogger("ctexport")
    saved_level = root.level
    root.addHandler(handler)
    ours.addHandler(handler)
    root.setLevel(logging.DEBUG)
    outputs: dict[str, str] = {}
    statuses: dict[str, int] = {}

    def step(name: str, fn, *argv) -> None:
        statuses[name] = fn(list(argv))
        out, err = capsys.readouterr()
        outputs[f"{name}: stdout"], outputs[f"{name}: stderr"] = out, err

    try:
        with FaultProxy(gcs_emulator.url) as proxy:
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
            step(
                "credentials check",
                credentials.main,
                "check",
                "--key-file",
                str(key_file),
                "--bucket",
                bucket,
            )
            step("destinations add", requests_cli.destinations_main, "add", "wh", "--bucket", bucket, "--prefix",
                 "ct", "--key-file", str(key_file), "--state", str(st))  # fmt: skip
            step("create", requests_cli.create_main, "--source", str(events), "--days", "2", "--destination", "wh",
                 "--database-id", "W4R-565-5Z4Z", "--state", str(st), "--now", "20261127000000")  # fmt: skip
            request_id = outputs["create: stdout"].strip().splitlines()[-1]
            step("activity", requests_cli.activity_main, "--state", str(st))
            step("show", requests_cli.show_main, request_id, "--state", str(st), "--json")
            monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
            step("export", run, "--source", str(events), "--output", f"gs://{bucket}/plain", "--request_id", "r1",
                 "--database_id", "db", "--run_timestamp", "20261127000000", "--start", "20261125", "--end",
                 "20261127", "--format", "csv")  # fmt: skip
            monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
            for name, broken in broken_keys(info, tmp_path).items():
                step(f"check {name}", credentials.main, "check", "--key-file", broken, "--bucket", bucket)
            requests = "\n".join(f"{s.method} {s.path}?{s.query} {json.dumps(s.headers)}" for s in proxy.log)
    finally:
        root.removeHandler(handler)
        ours.removeHandler(handler)
        root.setLevel(saved_level)
        tokens.stop()

    with urllib.request.urlopen(f"{gcs_emulator.url}/storage/v1/b/{bucket}/o?projection=full") as resp:
        listing = resp.read().decode()
    objects = {}
    for item in json.loads(listing).get("items", []):
        name = urllib.parse.quote(item["name"], safe="")
        with urllib.request.urlopen(
            f"{gcs_emulator.url}/download/storage/v1/b/{bucket}/o/{name}?alt=media"
        ) as r:
            objects[item["name"]] = r.read().decode("latin-1")
    state = {str(p.relative_to(st)): p.read_text() for p in st.rglob("*") if p.is_file()}
    return {
        "info": info,
        "statuses": statuses,
        "tokens issued": tokens.issued,
        "texts": {
            **outputs,
            "log records (DEBUG, every logger)": log.getvalue(),
            "object listing with metadata": listing,
            "requests sent to GCS": requests,
            **{f"object {n}": b for n, b in objects.items()},
            **{f"state {n}": t for n, t in state.items()},
        },
        "objects": objects,
        "request_id": request_id,
    }


def broken_keys(info: dict, folder: Path) -> dict[str, str]:
    """Key files that fail the check at each of its steps, each still full of the real key's material."""
    text = json.dumps(info, indent=2)
    lines = info["private_key"].splitlines()
    edited = dict(info, private_key="\n".join(lines[:3] + [lines[3][::-1]] + lines[4:]) + "\n")
    unknown = dict(info, private_key_id=info["private_key_id"][::-1])  # a key id the endpoint does not know
    variants = {
        "truncated file": text[: len(text) // 2],
        "edited private key": json.dumps(edited),
        "key Google refuses": json.dumps(unknown),
        "not a service account": json.dumps(dict(info, type="authorized_user")),
    }
    out = {}
    for name, body in variants.items():
        path = folder / f"{name.replace(' ', '-')}.json"
        path.write_text(body)
        out[name] = str(path)
    return out


def test_no_key_material_in_anything_written(everything):
    s = everything["statuses"]
    assert s["credentials check"] == 0 and s["destinations add"] == 0, everything["texts"][
        "credentials check: stderr"
    ]
    assert s["create"] == 0 and s["export"] == 0 and s["activity"] == 0 and s["show"] == 0
    assert all(s[f"check {n}"] == 1 for n in ("truncated file", "edited private key", "key Google refuses",
                                               "not a service account"))  # fmt: skip
    assert everything["tokens issued"] >= 2, "the key's real token flow ran"
    texts = everything["texts"]
    names = everything["objects"]
    rid = everything["request_id"]
    # What was scanned is what the commands really wrote: the scan cannot pass for lack of material.
    assert any(n.startswith(f"ct/_manifests/{rid}-") for n in names)
    assert any(n.startswith(f"ct/_errors/{rid}-") for n in names) and any(
        n.startswith("plain/_errors/") for n in names
    )
    assert any(n.startswith(f"state requests/{rid}") for n in texts) and any(
        "destinations" in n for n in texts
    )
    assert "bearer ya29." in texts["requests sent to GCS"].lower(), "the key's token was used"
    assert len(texts["log records (DEBUG, every logger)"]) > 1000
    for step in ("truncated file", "edited private key", "key Google refuses", "not a service account"):
        assert texts[f"check {step}: stderr"].startswith("credentials check failed: ")

    secret = fragments(everything["info"])
    assert len(secret) > 1500
    found = {where: leaks(text, secret) for where, text in texts.items()}
    assert {where: f for where, f in found.items() if f} == {}


def test_the_scan_finds_a_leak():
    """The detector itself: a key id, a PEM line, or a JSON-escaped key are all found."""
    info, _ = make_key("http://127.0.0.1:9/token")
    secret = fragments(info)
    body = info["private_key"].splitlines()[5]
    assert leaks(f"oops {info['private_key_id']} here", secret)
    assert leaks(f"x{body[7:30]}y", secret)
    assert leaks(json.dumps({"k": info["private_key"]}), secret)
    assert not leaks("nothing to see, " * 100, secret)


def test_readme_lists_permissions_and_a_role_short_of_storage_admin():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Permissions") :]
    section = section[: section.index("\n## ", 4)]
    for permission in ("storage.objects.create", "storage.objects.delete", "storage.objects.list",
                       "storage.buckets.get"):  # fmt: skip
        assert f"`{permission}`" in section, permission
    assert "roles/storage.objectAdmin" in section, "a predefined role that covers them"
    assert "roles/storage.admin" not in section
