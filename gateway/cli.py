"""The ``brug`` command line.

Each command lives in its own module with a ``register(subparsers)`` function that adds a
sub-parser whose ``func(args) -> int`` runs it. A user mistake (bad site file, unknown device,
unknown profile) is an exception whose class has ``user_error = True``; it is printed as one
line (file, line and field where known) and exits 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Modules that provide sub-commands, in the order ``brug --help`` lists them.
COMMAND_MODULES: list[str] = [
    "brug.gateway.run",
    "brug.gateway.control.ctl",
    "brug.gateway.demo",
    "brug.gateway.profiles_cli",
    "brug.gateway.sim",
    "brug.gateway.soundcards",
    "brug.gateway.devices",
    "brug.gateway.transcode_cli",
    "brug.bench.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brug",
        description="brug: radio interoperability gateway (TETRA, analog, IP talkgroup patching)")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from importlib.metadata import version

        print(f"brug {version('brug')}")
        return 0
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:          # `brug profiles list | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - user errors become one line, bugs still raise
        if getattr(exc, "user_error", False) or isinstance(exc, FileNotFoundError):
            print(f"brug: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
