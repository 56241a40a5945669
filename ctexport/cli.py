"""`ctexport`: the friendly front of the exporter.

ctexport export --flag value ...     run one export (the flags of `python -m pipelines.export`)
ctexport generate --out DIR ...      write realistic sample events and profiles
ctexport emulator start|stop|run     a local GCS emulator
ctexport demo                        all of the above, end to end, on an embedded default
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "export": _export,
        "generate": _generate,
        "emulator": _emulator,
        "demo": _demo,
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nctexport: unknown command {argv[0]!r}", file=sys.stderr)
            sys.exit(2)
        sys.exit(0)
    sys.exit(commands[argv[0]](argv[1:]) or 0)


def _export(argv: list[str]) -> int:
    from pipelines.export import run

    return run(argv)


def _generate(argv: list[str]) -> int:
    from ctexport.generate import main as generate_main

    return generate_main(argv)


def _emulator(argv: list[str]) -> int:
    from ctexport.emulator import main as emulator_main

    return emulator_main(argv)


def _demo(argv: list[str]) -> int:
    from ctexport.demo import main as demo_main

    parser = argparse.ArgumentParser(
        prog="ctexport demo", description="Export sample data to a local GCS emulator"
    )
    parser.add_argument("--events", type=int, default=20000, help="sample events to generate")
    parser.add_argument("--profiles", type=int, default=2000, help="sample profiles to generate")
    parser.add_argument(
        "--work", default="demo-out", help="folder for the sample data and the emulator's storage"
    )
    parser.add_argument("--port", type=int, default=0, help="emulator port (0: any free port)")
    return demo_main(parser.parse_args(argv))


if __name__ == "__main__":
    main()
