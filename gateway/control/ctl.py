"""``brug ctl``: the command-line control client (over :class:`GatewayClient`).

Examples::

    brug ctl status
    brug ctl --key alice patch create OP-HARBOUR be1 nl1 --mode half_duplex
    brug ctl profile lu1 renita-srg3900
    brug ctl key be1 2
    brug ctl --json ports
    brug ctl watch --topic port.
    brug ctl keys new alice --role technician
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from brug.gateway.control.auth import KeyError_, load_allowed, new_client_key
from brug.gateway.control.client import DEFAULT_ENDPOINT, DEFAULT_EVENTS, GatewayClient
from brug.gateway.control.protocol import ROLES


class CtlError(ValueError):
    user_error = True


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("ctl", help="control a running gateway over ZeroMQ",
                              description="Control a running gateway (brug run) over ZeroMQ.")
    p.add_argument("--endpoint", default=None, help=f"request endpoint ({DEFAULT_ENDPOINT})")
    p.add_argument("--events", default=None, help=f"event endpoint ({DEFAULT_EVENTS})")
    p.add_argument("--site", type=Path, help="take endpoints and keys_dir from this site file")
    p.add_argument("--keys-dir", type=Path, default=None,
                   help="CURVE keys directory (default $BRUG_KEYS or ./keys)")
    p.add_argument("--key", default=os.environ.get("BRUG_KEY"),
                   help="client key name in the keys directory (omit for loopback mode)")
    p.add_argument("--json", action="store_true", help="print raw JSON results")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per attempt")
    sub = p.add_subparsers(dest="ctl_cmd", metavar="ACTION", required=True)
    for name, hlp in (("status", "version, uptime, ticks, xruns"),
                      ("snapshot", "all state as JSON"), ("ports", "list ports"),
                      ("patches", "list patches"), ("profiles", "list hardware profiles"),
                      ("talkgroups", "list talkgroups"), ("reload", "reload the site file")):
        sub.add_parser(name, help=hlp)
    pa = sub.add_parser("patch", help="create/delete/modify patches")
    psub = pa.add_subparsers(dest="patch_cmd", metavar="OP", required=True)
    pc = psub.add_parser("create", help="patch create NAME PORT PORT [...]")
    pc.add_argument("name")
    pc.add_argument("members", nargs="+")
    pc.add_argument("--mode", default="half_duplex", choices=["half_duplex", "full_duplex"])
    pc.add_argument("--priority", action="append", default=[], metavar="PORT=N")
    pd = psub.add_parser("delete", help="patch delete NAME")
    pd.add_argument("name")
    for op in ("add", "remove"):
        x = psub.add_parser(op, help=f"patch {op} PATCH PORT")
        x.add_argument("patch")
        x.add_argument("port")
    pm = psub.add_parser("mode", help="patch mode PATCH half_duplex|full_duplex")
    pm.add_argument("patch")
    pm.add_argument("mode", choices=["half_duplex", "full_duplex"])
    k = sub.add_parser("key", help="manual test transmission: key PORT SECONDS")
    k.add_argument("port")
    k.add_argument("seconds", type=float)
    k.add_argument("--tone", type=float, default=None, help="send a tone of this many Hz")
    pr = sub.add_parser("profile", help="switch a port's hardware profile: profile PORT NAME")
    pr.add_argument("port")
    pr.add_argument("profile")
    tg = sub.add_parser("talkgroup", help="select a talkgroup: talkgroup PORT TG")
    tg.add_argument("port")
    tg.add_argument("talkgroup")
    g = sub.add_parser("gain", help="gain PORT [--rx DB] [--tx DB]")
    g.add_argument("port")
    g.add_argument("--rx", type=float)
    g.add_argument("--tx", type=float)
    m = sub.add_parser("mute", help="mute PORT [--rx on|off] [--tx on|off]")
    m.add_argument("port")
    m.add_argument("--rx", choices=["on", "off"])
    m.add_argument("--tx", choices=["on", "off"])
    rec = sub.add_parser("record", help="record start [PORT...] | record stop")
    rec.add_argument("action", choices=["start", "stop"])
    rec.add_argument("ports", nargs="*")
    w = sub.add_parser("watch", help="print events as they happen")
    w.add_argument("--topic", action="append", default=[], help="topic prefix (repeatable)")
    w.add_argument("--levels", action="store_true", help="include level meters")
    w.add_argument("--count", type=int, default=0, help="stop after N events")
    w.add_argument("--seconds", type=float, default=None, help="stop after N s of silence")
    ks = sub.add_parser("keys", help="keys new NAME --role ROLE | keys list")
    ksub = ks.add_subparsers(dest="keys_cmd", metavar="OP", required=True)
    kn = ksub.add_parser("new", help="create a client key pair with a role")
    kn.add_argument("name")
    kn.add_argument("--role", required=True, choices=ROLES)
    ksub.add_parser("list", help="list allowed client keys")
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace) -> tuple[str, str, Path]:
    ep, ev = args.endpoint, args.events
    keys = args.keys_dir
    if args.site is not None:
        from brug.gateway.control.server import ControlSettings
        from brug.gateway.site import load_site

        site = load_site(args.site)
        section = {k: v for k, v in dict(site.control or {}).items() if k != "enabled"}
        cs = ControlSettings.from_mapping(section, base=Path(site.path).parent)
        ep, ev = ep or cs.rep, ev or cs.pub
        keys = keys or cs.keys_dir
    keys = keys or Path(os.environ.get("BRUG_KEYS", "keys"))
    return ep or DEFAULT_ENDPOINT, ev or DEFAULT_EVENTS, keys


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[("-" if r.get(c) in (None, "", []) else
               ",".join(map(str, r[c])) if isinstance(r.get(c), list) else str(r.get(c)))
              for c in cols] for r in rows]
    w = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w[i]) for i, c in enumerate(cols))]
    lines += ["  ".join(v.ljust(w[i]) for i, v in enumerate(row)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _onoff(v: str | None) -> bool | None:
    return None if v is None else v == "on"


def run(args: argparse.Namespace) -> int:
    out = sys.stdout
    if args.ctl_cmd == "keys":
        keys = args.keys_dir or Path(os.environ.get("BRUG_KEYS", "keys"))
        if args.keys_cmd == "new":
            pub, sec = new_client_key(keys, args.name, args.role)
            print(f"created {pub} (allow-list, role {args.role}) and {sec} (give it to the "
                  f"client; keep it secret)", file=out)
        else:
            print(_table([{"name": k.name, "role": k.role} for k in load_allowed(keys).values()],
                         ["name", "role"]), file=out)
        return 0
    ep, ev, keys = _settings(args)
    try:
        client = GatewayClient(ep, ev, keys_dir=keys, key=args.key, timeout=args.timeout,
                               retries=1)
    except KeyError_ as exc:
        raise CtlError(str(exc)) from None
    with client:
        return _dispatch(client, args, out)


def _dispatch(c: GatewayClient, args: argparse.Namespace, out: Any) -> int:
    cmd = args.ctl_cmd
    res: Any
    text: str | None = None
    if cmd == "status":
        res = c.status()
        text = (f"brug {res['version']} (protocol {res['protocol']})  up {res['uptime_s']:.0f} s"
                f"  ticks {res['ticks']}  late ticks {res['late_ticks']}  xruns {res['xruns']}"
                f"  event seq {res['seq']}\nyou are {res['user']} ({res['role']})"
                + ("  recording" if res.get("recording") else ""))
    elif cmd == "snapshot":
        res = c.snapshot()
        text = json.dumps(res, indent=1)
    elif cmd == "ports":
        res = c.ports()
        text = _table(res, ["name", "profile", "network", "talkgroup", "patch", "cor", "ptt",
                            "rx_gain_db", "tx_gain_db"])
    elif cmd == "patches":
        res = c.patches()
        text = _table(res, ["name", "mode", "members", "holder", "blocked"])
    elif cmd == "profiles":
        res = c.profiles()
        text = _table(res, ["name"])
    elif cmd == "talkgroups":
        res = c.talkgroups()
        cols = sorted({k for r in res for k in r}) if res else ["name"]
        text = _table(res, cols)
    elif cmd == "reload":
        res = c.reload()
    elif cmd == "patch":
        op = args.patch_cmd
        if op == "create":
            prio: dict[str, int] = {}
            for item in args.priority:
                port, _, n = item.partition("=")
                try:
                    prio[port] = int(n)
                except ValueError:
                    raise CtlError(f"--priority {item!r}: use PORT=N") from None
            res = c.patch_create(args.name, args.members, args.mode, prio)
            text = f"patch {args.name}: {' + '.join(args.members)} ({args.mode})"
        elif op == "delete":
            res = c.patch_delete(args.name)
            text = f"patch {args.name} deleted"
        elif op == "add":
            res = c.patch_add_member(args.patch, args.port)
        elif op == "remove":
            res = c.patch_remove_member(args.patch, args.port)
        else:
            res = c.patch_set_mode(args.patch, args.mode)
    elif cmd == "key":
        res = c.key(args.port, args.seconds, args.tone)
        text = f"{args.port} keyed for {args.seconds:g} s"
    elif cmd == "profile":
        res = c.set_profile(args.port, args.profile)
        text = f"{args.port}: profile {res['previous']} -> {res['profile']}"
    elif cmd == "talkgroup":
        res = c.set_talkgroup(args.port, args.talkgroup)
        text = f"{args.port}: talkgroup {res['talkgroup']} (via {res['via']})"
    elif cmd == "gain":
        res = c.set_gain(args.port, args.rx, args.tx)
    elif cmd == "mute":
        res = c.set_mute(args.port, _onoff(args.rx), _onoff(args.tx))
    elif cmd == "record":
        res = c.record_start(args.ports or None) if args.action == "start" else c.record_stop()
    elif cmd == "watch":
        return _watch(c, args, out)
    else:  # pragma: no cover - argparse restricts the choices
        raise CtlError(f"unknown action {cmd!r}")
    if args.json or text is None:
        print(json.dumps(res, indent=None if args.json else 1), file=out)
    else:
        print(text, file=out)
    return 0


def _watch(c: GatewayClient, args: argparse.Namespace, out: Any) -> int:
    prefixes = tuple(args.topic) or ("",)
    n = 0
    for ev in c.events(prefixes, timeout=args.seconds):
        topic = ev.get("topic", "")
        if topic.endswith(".level") and not args.levels:
            continue
        if args.json:
            print(json.dumps(ev), file=out, flush=True)
        elif topic == "state.snapshot":
            d = ev["data"]
            print(f"== snapshot seq {ev['seq']}: {len(d['ports'])} ports, patches: "
                  f"{', '.join(d['patches']) or '(none)'}", file=out, flush=True)
        else:
            data = " ".join(f"{k}={v}" for k, v in (ev.get("data") or {}).items())
            t = ev.get("t_s")
            print(f"{'' if t is None else f'{t:10.3f} '}#{ev.get('seq')} {topic} {data}"
                  + (f"  ({ev['info']})" if ev.get("info") else ""), file=out, flush=True)
        n += 1
        if args.count and n >= args.count:
            break
    return 0
