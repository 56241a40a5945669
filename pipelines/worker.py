"""A worker process of a multi-process local run (--direct_running_mode multi_processing).

It is Beam's SDK harness (`apache_beam.runners.worker.sdk_worker_main`), which the runner starts with the
control address in its environment, plus one thing: once the harness is done, the process exits at once. The
runner stops its workers one after the other, and a Python process with gRPC and Beam loaded takes about 0.6 s
to tear itself down, so each worker's exit used to add that to the end of every run.
"""

from __future__ import annotations

import os
import sys
import traceback


def main() -> None:
    from apache_beam.runners.worker import sdk_worker_main

    status = 0
    try:
        sdk_worker_main.main(sys.argv)
    except BaseException:  # the harness has logged it to the runner; show it here too, as Python would
        traceback.print_exc()
        status = 1
    finally:
        # Every bundle is finished (files closed, results sent) before the runner lets a worker go.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


if __name__ == "__main__":
    main()
