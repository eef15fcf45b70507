"""``brug devices``: list the sound devices PortAudio sees.

Matching hardware profiles to devices comes from hw_profiles later: :data:`PROFILE_MATCHER`
is the seam. Set it to a function ``(device_name) -> list[str]`` of profile names and the
listing shows them in its last column.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Seam for hardware-profile matching: device name -> names of profiles that fit it.
PROFILE_MATCHER: Callable[[str], list[str]] | None = None


@dataclass(frozen=True)
class Device:
    """One PortAudio device: ``index``, ``name``, channel counts and default rate (Hz)."""

    index: int
    name: str
    hostapi: str
    max_input_channels: int
    max_output_channels: int
    default_samplerate: float


def list_devices() -> list[Device]:
    """All devices PortAudio lists in this process (call after the environment is set)."""
    import sounddevice as sd

    apis = sd.query_hostapis()
    out = []
    for i, d in enumerate(sd.query_devices()):
        api = apis[d["hostapi"]]["name"] if isinstance(apis, tuple) else ""
        out.append(Device(i, str(d["name"]), str(api), int(d["max_input_channels"]),
                          int(d["max_output_channels"]), float(d["default_samplerate"])))
    return out


def find_device(name: str, kind: str) -> int:
    """Index of the device called exactly ``name`` (else the first whose name contains it)
    that can do ``kind`` ("input" or "output").

    Raises
    ------
    DeviceNotFound
        Listing the devices that exist, so a typo in a site file is one clear line.
    """
    devs = list_devices()

    def ok(d: Device) -> bool:
        return (d.max_input_channels if kind == "input" else d.max_output_channels) > 0

    for d in devs:
        if d.name == name and ok(d):
            return d.index
    for d in devs:
        if name in d.name and ok(d):
            return d.index
    names = ", ".join(d.name for d in devs if ok(d)) or "none"
    raise DeviceNotFound(f"no {kind} sound device {name!r}; devices: {names}")


class DeviceNotFound(LookupError):
    """A device named in a site file or on the command line does not exist."""

    user_error = True


def _devices(args: argparse.Namespace) -> int:
    if args.soundcards:
        from brug.gateway.soundcards import SoundCards

        SoundCards(args.soundcards).apply_env()
    devs = list_devices()
    print(f"{'idx':>3}  {'name':32} {'in':>3} {'out':>3} {'rate':>7}  profiles")
    for d in devs:
        profiles = ", ".join(PROFILE_MATCHER(d.name)) if PROFILE_MATCHER else "-"
        print(f"{d.index:3d}  {d.name:32} {d.max_input_channels:3d} "
              f"{d.max_output_channels:3d} {d.default_samplerate:7.0f}  {profiles}")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("devices", help="list sound devices (and matching profiles)")
    parser.add_argument("--soundcards", metavar="RUNTIME_DIR", default=None,
                        help="also see the virtual cards of this 'brug soundcards' runtime dir")
    parser.set_defaults(func=_devices)
