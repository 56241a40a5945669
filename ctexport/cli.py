"""`ctexport`: the friendly front of the exporter.

    ctexport export --flag value ...        run one export (the flags of `python -m pipelines.export`)
    ctexport credentials check ...          check a service-account key (or ADC) and a bucket
    ctexport destinations add|list|remove   saved output locations
    ctexport create ...                     a new export request (one-time runs at once; recurring is registered)
    ctexport activity                       the Activity Log
    ctexport show ID                        one request with every run
    ctexport stop ID                        stop a recurring request
    ctexport tick                           run every due window of every active recurring request
    ctexport scheduler                      run `tick` in a loop
    ctexport schedule ID ... / unschedule ID   Cloud Scheduler job that launches the Dataflow flex template
    ctexport generate --out DIR ...         write realistic sample events and profiles
    ctexport emulator start|stop|run        a local GCS emulator
    ctexport demo                           all of it, end to end, on an embedded default

`ctexport COMMAND --help` says more.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, function taking argv and returning the exit status, or ending the process itself as
# an export does). Modules load only when used.
COMMANDS = {
    "export": ("pipelines.export", "main"),
    "credentials": ("ctexport.credentials", "main"),
    "destinations": ("ctexport.requests_cli", "destinations_main"),
    "create": ("ctexport.requests_cli", "create_main"),
    "activity": ("ctexport.requests_cli", "activity_main"),
    "show": ("ctexport.requests_cli", "show_main"),
    "stop": ("ctexport.requests_cli", "stop_main"),
    "tick": ("ctexport.requests_cli", "tick_main"),
    "scheduler": ("ctexport.requests_cli", "scheduler_main"),
    "schedule": ("ctexport.schedule", "schedule_main"),
    "unschedule": ("ctexport.schedule", "unschedule_main"),
    "generate": ("ctexport.generate", "main"),
    "emulator": ("ctexport.emulator", "main"),
    "demo": ("ctexport.demo", "main"),
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0)
    if argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr)
        print(f"\nctexport: unknown command {argv[0]!r}", file=sys.stderr)
        sys.exit(2)
    module, function = COMMANDS[argv[0]]
    sys.exit(getattr(importlib.import_module(module), function)(argv[1:]) or 0)


if __name__ == "__main__":
    main()
