"""templates/: metadata.json mirrors the pipeline options one to one (names, help, required, regexes that
accept what validation accepts), the Dockerfile runs the pipeline's entry point with the package's setup file
and Beam's version, and the lock file pins what setup.py asks for."""

from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from google.cloud import dataflow_v1beta3
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipelines.options import ExportOptions, InvalidRequest, validate

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
NOW = 1795780800  # 2026-11-27T12:00:00Z


def metadata() -> dict:
    return json.loads((TEMPLATES / "metadata.json").read_text())


def option_actions() -> list[argparse.Action]:
    parser = argparse.ArgumentParser()
    ExportOptions._add_argparse_args(parser)
    return [a for a in parser._actions if a.dest != "help"]


def params() -> dict[str, dict]:
    return {p["name"]: p for p in metadata()["parameters"]}


# ---- metadata.json and the options class ---------------------------------------------------------------------


def test_metadata_is_valid_dataflow_template_metadata():
    """Parsed by the Dataflow client's own TemplateMetadata type: an unknown or misspelt field fails."""
    text = (TEMPLATES / "metadata.json").read_text()
    meta = dataflow_v1beta3.TemplateMetadata.from_json(text, ignore_unknown_fields=False)
    assert meta.name and meta.description
    for p in meta.parameters:
        assert p.name and p.label and p.help_text and p.regexes, p.name


def test_metadata_parameters_mirror_the_options_one_to_one():
    actions = option_actions()
    names = [a.option_strings[0].removeprefix("--") for a in actions]
    assert names == [a.dest for a in actions], "flag names are the option names"
    assert [p["name"] for p in metadata()["parameters"]] == names, "same options, same order"
    labels = [p["label"] for p in metadata()["parameters"]]
    assert len(set(labels)) == len(labels)
    for action in actions:
        p = params()[action.dest]
        assert set(p) == {"name", "label", "helpText", "isOptional", "regexes"}, action.dest
        assert p["helpText"].startswith(action.help), f"{action.dest}: helpText starts with the option's help"
        assert len(p["regexes"]) == 1
        re.compile(p["regexes"][0])


REQUIRED_ARGV = {
    "source": "gs://events/in/*.jsonl",
    "output": "gs://exports/out",
    "request_id": "req_1",
    "database_id": "W4R-565-5Z4Z",
}


def check(argv: list[str]) -> list[str]:
    """Validation's problems for argv (no storage access); empty when the request is valid."""
    try:
        validate(PipelineOptions(argv), now=NOW, check_storage=False)
    except InvalidRequest as e:
        return e.problems
    return []


def test_required_parameters_are_those_validation_requires():
    required = {name for name, p in params().items() if not p["isOptional"]}
    assert required == set(REQUIRED_ARGV)
    base = [f"--{k}={v}" for k, v in REQUIRED_ARGV.items()]
    # The required ones, and none else (a profile export needs no window), make a valid request...
    assert check(base + ["--export_type=profiles"]) == []
    # ...and each of them is missed when absent.
    for name in required:
        argv = [a for a in base if not a.startswith(f"--{name}=")] + ["--export_type=profiles"]
        assert any(p.startswith(f"--{name} ") for p in check(argv)), name


# For each flag: what a valid request needs around it (given the value), values validation accepts, values
# it rejects. Each regex must accept exactly the first and reject the second. `LOCAL` values are valid for the
# DirectRunner but not on Dataflow, which reads and writes gs:// only: the template's regex refuses them.
ONCE = ["--start=20261125", "--end=20261127"]
RECURRING = ["--frequency=recurring", "--every_hours=4"]


def once(value: str) -> list[str]:
    return ONCE


EXAMPLES: dict[str, tuple] = {
    "source": (once, ["gs://b/events/*.jsonl", "gs://b/a.jsonl,gs://c/b.avro", "gs://b/x, gs://c/y"], [""]),
    "source_format": (once, ["jsonl", "avro", "parquet"], ["", "json", "csv", "JSONL"]),
    "export_type": (lambda v: [] if v == "profiles" else ONCE, ["events", "profiles"], ["", "event", "all"]),
    "events": (
        once,
        ["Charged", "Charged,App Launched", '["Size, Colour Chosen","Charged"]', "[]", '[ "a\\"b" ]', "Kauf"],
        ["[1,2]", '["a",', '["a"] x', "[Charged]"],
    ),
    "frequency": (
        lambda v: ["--every_hours=4"] if v == "recurring" else ONCE,
        ["once", "recurring"],
        ["", "daily", "ONCE"],
    ),
    "start": (
        lambda v: ["--end=20261127"],
        ["20261125", "20261125120000", "2026-11-25", "2026-11-25T06:00:00Z", "2026-11-25T06:00:00+05:30"],
        ["yesterday", "2026/11/25", "1795737600", "2026-11-25Z", ""],
    ),
    "end": (
        lambda v: ["--start=20261125"],
        [
            "20261127",
            "20261127000000",
            "2026-11-27T00:00:00Z",
            "2026-11-27 00:00",
            "2026-11-27T00:00:00.5+00:00",
        ],
        ["tomorrow", "27-11-2026", "1795737600000", ""],
    ),
    "every_hours": (
        lambda v: ["--frequency=recurring"],
        ["4", "6", "8", "12", "24"],
        ["", "5", "3", "48", "0"],
    ),
    # Empty means the default for run_timestamp, compression and timezone, in the pipeline and the template.
    "run_timestamp": (
        once,
        ["20261127120000", ""],
        ["2026112712", "2026-11-27T12:00:00Z", "202611271200000"],
    ),
    "settle_minutes": (lambda v: RECURRING, ["0", "15", "90"], ["", "-5", "soon", "1.5"]),
    "format": (once, ["json", "csv", "xml", "parquet"], ["", "avro", "JSON", "ndjson"]),
    "compression": (
        lambda v: ["--format=parquet"] + ONCE,
        ["snappy", "zstd", "gzip", "none", ""],
        ["lz4", "bz2"],
    ),
    "json_header": (once, ["true", "false", "True", "FALSE", "yes", "no", "1", "0"], ["", "maybe", "2"]),
    "csv_formula_guard": (once, ["true", "false", "Yes", "0"], ["", "on", "off"]),
    "output": (once, ["gs://my-exports", "gs://my-exports/clevertap", "gs://a.b-c_d/x/y/"], [""]),
    "request_id": (once, ["req_1", "1732700000_a1b2c3", "ABC"], ["", "req-1", "req 1", "r/1"]),
    "database_id": (once, ["W4R-565-5Z4Z", "db_1"], ["", "W4R 565", "a/b", "a.b"]),
    "max_file_bytes": (
        once,
        ["1024", "1025", "1099", "1100", "1999", "2000", "9999", "10000", "104857600"],
        ["", "1023", "999", "0", "-1", "100MB", "1e8"],
    ),
    "max_bad_records": (once, ["0", "5", "1000000"], ["", "-1", "ten", "1.5"]),
    "timezone": (
        once,
        ["UTC", "Asia/Kolkata", "America/Argentina/Buenos_Aires", "Etc/GMT+5", ""],
        ["Asia/", "+05:30"],
    ),
}
LOCAL = {"source": ["/data/events/*.jsonl", "gs://b/a.jsonl,/data/b.jsonl"], "output": ["/tmp/exports"]}


def argv_for(flag: str, value: str, context) -> list[str]:
    argv = [f"--{k}={v}" for k, v in REQUIRED_ARGV.items() if k != flag]
    return argv + context(value) + [f"--{flag}={value}"]


def test_every_parameter_has_examples():
    assert set(EXAMPLES) == set(params())


@pytest.mark.parametrize("flag", sorted(EXAMPLES))
def test_regexes_accept_what_validation_accepts(flag):
    context, good, bad = EXAMPLES[flag]
    regex = re.compile(params()[flag]["regexes"][0])
    for value in good:
        assert check(argv_for(flag, value, context)) == [], (flag, value)
        assert regex.match(value), f"{flag}: the template refuses {value!r}, which the pipeline accepts"
    for value in bad:
        assert check(argv_for(flag, value, context)), (flag, value, "the pipeline accepts it")
        assert not regex.match(value), f"{flag}: the template takes {value!r}, which the pipeline refuses"
    for value in LOCAL.get(flag, []):
        assert check(argv_for(flag, value, context)) == [], (flag, value)
        assert not regex.match(value), f"{flag}: Dataflow cannot use {value!r}"


# ---- Dockerfile, lock and build files ------------------------------------------------------------------------


def setup_py() -> tuple[str, list[str]]:
    """BEAM_VERSION and install_requires as setup.py states them (read, not run)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    beam = next(
        n.value.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "BEAM_VERSION" for t in n.targets)
    )
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    node = next(k.value for k in call.keywords if k.arg == "install_requires")
    requires = eval(compile(ast.Expression(node), "setup.py", "eval"), {"BEAM_VERSION": beam})
    return beam, requires


def lock() -> dict[str, str]:
    pins = {}
    for line in (TEMPLATES / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version and re.fullmatch(r"[A-Za-z0-9_.+-]+", version), f"not an exact pin: {line}"
            assert canonicalize_name(name) not in pins, f"pinned twice: {name}"
            pins[canonicalize_name(name)] = version
    return pins


def dockerfile() -> str:
    return (TEMPLATES / "Dockerfile").read_text()


def test_lock_pins_what_setup_py_asks_for():
    beam, requires = setup_py()
    pins = lock()
    assert pins["apache-beam"] == beam
    for text in requires:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in templates/requirements.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is not {req}"
    assert "google-cloud-scheduler" in {canonicalize_name(Requirement(r).name) for r in requires}


def test_dockerfile_is_a_python_flex_template_at_beams_version():
    text = dockerfile()
    beam, _ = setup_py()
    assert re.search(
        r"^ARG LAUNCHER_IMAGE=gcr\.io/dataflow-templates-base/python311-template-launcher-base[:@]",
        text,
        re.M,
    )
    assert re.search(r"^FROM \$\{LAUNCHER_IMAGE\}\s*$", text, re.M)
    assert re.search(rf"^ARG BEAM_VERSION={re.escape(beam)}\s*$", text, re.M), "Beam as in setup.py"
    assert "pip install --no-cache-dir -r templates/requirements.txt" in text
    workdir = re.search(r"^ARG WORKDIR=(\S+)", text, re.M)[1]
    env = dict(re.findall(r'^ENV (FLEX_TEMPLATE_PYTHON_\w+)="?([^"\n]+)"?', text, re.M))
    assert set(env) == {"FLEX_TEMPLATE_PYTHON_PY_FILE", "FLEX_TEMPLATE_PYTHON_SETUP_FILE"}
    in_repo = {k: v.replace("${WORKDIR}", workdir).removeprefix(workdir + "/") for k, v in env.items()}
    assert in_repo == {
        "FLEX_TEMPLATE_PYTHON_PY_FILE": "pipelines/export.py",
        "FLEX_TEMPLATE_PYTHON_SETUP_FILE": "setup.py",
    }
    assert 'if __name__ == "__main__":' in (ROOT / "pipelines" / "export.py").read_text()


def test_dockerfile_copies_what_exists_and_the_ignore_file_lets_it_through():
    copies = re.findall(r"^COPY (?!--from)(.+) (\S+)\s*$", dockerfile(), re.M)
    sources = [s for srcs, _ in copies for s in srcs.split()]
    assert {
        "setup.py",
        "pyproject.toml",
        "pipelines",
        "transforms",
        "ctexport",
        "templates/requirements.txt",
    } <= set(sources)
    for s in sources:
        assert (ROOT / s).exists(), s
    allowed = {
        line[1:].rstrip("/")
        for line in (TEMPLATES / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert set(sources) <= allowed, set(sources) - allowed
    build = (TEMPLATES / "cloudbuild.yaml").read_text()
    assert '"-f", "templates/Dockerfile"' in build and "${_IMAGE}" in build
