"""Night shift: switch a running gateway to its night configuration over the control plane.

At night one operator covers three regions, so the regional patches are merged into one and
the IP consoles are swapped for the radio-room VOX radios. The script is idempotent (it can
be re-run) and prints what it changed; it only uses the public client API.

    python examples/night_shift.py --endpoint tcp://127.0.0.1:5555 --key nightlead
    python examples/night_shift.py --demo        # against an in-process gateway

Needs a key with role ``technician`` (patches) when the gateway uses CURVE keys.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from brug.gateway.client import GatewayClient, GatewayError

#: port -> hardware profile at night
NIGHT_PROFILES = {"con1": "vox-radio", "con2": "vox-radio"}
#: the merged night patch, and the day patches it replaces
NIGHT_PATCH = ("NIGHT-ALL", ["be1", "nl1", "lu1", "con1"])
DAY_PATCHES = ("DAY-BE-NL", "DAY-LU")
#: receive gains (dB) for the quieter night radio room
NIGHT_GAINS = {"con1": 3.0, "con2": 3.0}


def night_shift(gw: GatewayClient, log: Any = print) -> None:
    """Apply the night configuration through ``gw``; idempotent."""
    ports = {p["name"]: p for p in gw.ports()}
    for port, profile in NIGHT_PROFILES.items():
        if port not in ports:
            log(f"skip {port}: not on this gateway")
        elif ports[port]["profile"] != profile:
            r = gw.set_profile(port, profile)
            log(f"{port}: profile {r['previous']} -> {r['profile']}")
    for port, db in NIGHT_GAINS.items():
        if port in ports:
            gw.set_gain(port, rx_db=db)
            log(f"{port}: rx gain {db:+.1f} dB")
    patches = {p["name"]: p for p in gw.patches()}
    for name in DAY_PATCHES:
        if name in patches:
            gw.patch_delete(name)
            log(f"patch {name} deleted")
    name, members = NIGHT_PATCH
    members = [m for m in members if m in ports]
    if name not in patches and len(members) >= 2:
        gw.patch_create(name, members, mode="half_duplex", priorities={members[0]: 1})
        log(f"patch {name}: {' + '.join(members)}")
    st = gw.status()
    log(f"night shift set; gateway up {st['uptime_s']:.0f} s, {st['xruns']} xruns")


def _demo() -> int:
    """Run against an in-process gateway (memory ports) on loopback."""
    from brug.gateway.control.local import memory_gateway
    from brug.gateway.control.server import ControlServer, ControlSettings

    lg = memory_gateway(["be1", "nl1", "lu1", "con1", "con2"],
                        profiles=("ip-console-pcma", "vox-radio"))
    lg.engine.create_patch("DAY-BE-NL", ["be1", "nl1"])
    lg.engine.create_patch("DAY-LU", ["lu1", "con1"])
    lg.run()
    srv = ControlServer(lg, ControlSettings(rep="tcp://127.0.0.1:*", pub="tcp://127.0.0.1:*"))
    srv.start()
    try:
        with GatewayClient(srv.endpoint, srv.pub_endpoint) as gw:
            night_shift(gw)
            for p in gw.patches():
                print(f"  {p['name']}: {', '.join(p['members'])}")
    finally:
        srv.stop()
        lg.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", default="tcp://127.0.0.1:5555")
    ap.add_argument("--keys-dir", type=Path, default=Path("keys"))
    ap.add_argument("--key", default=None, help="client key name (CURVE)")
    ap.add_argument("--demo", action="store_true", help="run against an in-process gateway")
    args = ap.parse_args(argv)
    if args.demo:
        return _demo()
    try:
        with GatewayClient(args.endpoint, keys_dir=args.keys_dir, key=args.key) as gw:
            night_shift(gw)
    except (GatewayError, TimeoutError) as exc:
        print(f"night_shift: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
