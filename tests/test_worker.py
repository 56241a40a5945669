"""The standby workers of a multi-process local run (`pipelines.worker`): the worker command the runner starts
hands its work to a standby forked by the export's own process, returns the standby's exit status, and runs
the harness itself when no standby is left; standbys nobody takes end with the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from pipelines.export import usage

ROOT = Path(__file__).resolve().parent.parent

# Runs in a fresh process (standbys are forked only from a process that has not started a runner). Beam's
# harness is replaced by one that says where it ran and fails for the worker "bad".
SCRIPT = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from pipelines import worker

    def harness():
        print(json.dumps({"ran": os.environ["WORKER_ID"], "pid": os.getpid(), "parent": os.getppid(),
                          "control": os.environ.get("CONTROL_API_SERVICE_DESCRIPTOR")}), flush=True)
        if os.environ["WORKER_ID"] == "bad":
            raise RuntimeError("the harness failed")

    worker._harness = harness
    report = {"main": os.getpid()}
    with worker.standby_workers(2) as command:
        report["command"] = command
        socket_path = command.split()[-1]
        workers = [
            subprocess.Popen(command, shell=True, env=dict(os.environ, WORKER_ID=w, CONTROL_API_SERVICE_DESCRIPTOR=w))
            for w in ("good", "bad")
        ]
        report["statuses"] = [p.wait(60) for p in workers]
        report["workers"] = [p.pid for p in workers]
        # Both standbys are taken: a third worker runs Beam's harness itself (which fails here: no control address).
        env = {k: v for k, v in os.environ.items() if k != "CONTROL_API_SERVICE_DESCRIPTOR"}
        third = subprocess.run(command, shell=True, env=dict(env, WORKER_ID="third"), capture_output=True, text=True, timeout=120)
        report["third"] = [third.returncode, "CONTROL_API_SERVICE_DESCRIPTOR" in third.stderr, '"ran"' in third.stdout]
    report["socket_left"] = os.path.exists(socket_path)
    with worker.standby_workers(2) as unused:  # two standbys nobody takes
        report["unused"] = unused is not None
    try:
        os.waitpid(-1, os.WNOHANG)
        report["children_left"] = True
    except ChildProcessError:
        report["children_left"] = False
    print(json.dumps(report))
    """
)


def test_standbys_do_the_work_of_the_workers_and_end_with_the_run():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    ran, report = lines[:-1], lines[-1]
    assert "--standby" in report["command"]
    assert report["statuses"] == [0, 1]  # the standby's status is the worker's
    assert "the harness failed" in done.stderr
    assert sorted(r["ran"] for r in ran) == ["bad", "good"]
    # The harness ran in a standby, a child of the export's process, with the worker's environment.
    for r in ran:
        assert r["parent"] == report["main"] and r["pid"] not in report["workers"]
        assert r["control"] == r["ran"]
    assert len({r["pid"] for r in ran}) == 2
    assert report["third"] == [1, True, False]
    assert report["unused"] is True
    assert report["socket_left"] is False
    assert report["children_left"] is False


def test_no_standbys_in_a_process_that_has_started_a_runner():
    """gRPC must not be running when a process forks: after a runner has been imported, workers start plainly."""
    script = (
        "import apache_beam.runners.portability.fn_api_runner\n"
        "from pipelines import worker\n"
        "with worker.standby_workers(2) as command:\n"
        "    print(command)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "None"


def test_a_standby_whose_worker_gives_up_ends_quietly():
    """A worker that times out waiting runs the harness itself and closes the connection: the standby that
    answers late must then end, without running a second harness and without a traceback."""
    script = textwrap.dedent(
        """
        import os, socket
        from pipelines import worker

        def harness():
            print("second harness", flush=True)

        worker._harness = harness
        with worker.standby_workers(1) as command:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(command.split()[-1])
            assert conn.recv(1) == b"R"
            conn.close()
            _, status = os.wait()  # the standby ends by itself: the entry has not closed its pipe yet
            print("standby status", os.waitstatus_to_exitcode(status))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:1] == ["standby status 0"]
    assert "second harness" not in done.stdout and "Traceback" not in done.stderr


def test_the_command_line_reports_help_and_bad_flags_once():
    """`python -m pipelines.export` reads the flags before anything else to learn whether to fork standbys;
    that read stays silent, so help and a bad flag are printed by the run alone, once."""
    argv = [sys.executable, "-m", "pipelines.export"]
    # Both entries end the process without the interpreter's teardown (`export.exit_now`): what they printed
    # to a pipe must still arrive.
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    for entry in (argv, [sys.executable, "-m", "ctexport.cli", "export"]):
        helped = subprocess.run(
            entry + ["--help"], cwd=ROOT, env=buffered, capture_output=True, text=True, timeout=120
        )
        assert helped.returncode == 0
        assert helped.stdout.startswith("usage: python -m pipelines.export")
        assert helped.stdout == usage() + "\n"  # once, and whole
    bad = ["--direct_num_workers", "x", "--direct_running_mode", "multi_processing"]
    failed = subprocess.run(argv + bad, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2
    assert failed.stderr.count("invalid int value: 'x'") == 1
