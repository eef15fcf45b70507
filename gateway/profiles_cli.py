"""``brug profiles check FILE...`` and ``brug profiles list``.

``check`` validates each file (or bundled name) and prints ``NAME: ok`` per good one; the
first bad one becomes one line on stderr (``file:line: key.path: message``) and exit code 2
through the CLI's user-error handling.
"""

from __future__ import annotations

import argparse
from typing import Any

from brug.hw_profiles import list_profiles, load_profile


def _check(args: argparse.Namespace) -> int:
    for f in args.files:
        p = load_profile(f)
        print(f"{p.source if f.endswith(('.yaml', '.yml')) else f}: ok "
              f"({p.name}, {p.kind}, squelch {p.squelch.type}, ptt {p.ptt.type})")
    return 0


def _list(args: argparse.Namespace) -> int:
    for name in list_profiles():
        p = load_profile(name)
        link = f"PEI {p.pei.baud} baud" if p.pei else (f"codec {p.codec.name}" if p.codec
                                                       else "")
        print(f"{name:18} {p.kind:7} squelch={p.squelch.type:6} ptt={p.ptt.type:6} "
              f"{link:16} {p.description}")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("profiles", help="check and list hardware profiles")
    sub = parser.add_subparsers(dest="profiles_command", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="validate profile files (or bundled names)")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(func=_check)
    lst = sub.add_parser("list", help="list the bundled profiles")
    lst.set_defaults(func=_list)
