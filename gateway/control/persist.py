"""Persistence of live changes: patches and per-port assignments survive a restart.

The state file (JSON, ``schema: brug-control-state/1``) is rewritten atomically after every
successful change (temporary file in the same folder, fsync, rename, fsync of the folder), so
a crash leaves either the old or the new file, never a torn one. :func:`restore_state` puts it
back into an engine *before its first tick*.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from brug.gateway.control.commands import GatewayLike

SCHEMA = "brug-control-state/1"


class StateFileError(ValueError):
    """The state file cannot be read (a user-visible problem, reported in one line)."""

    user_error = True


def state_from_snapshot(snap: dict[str, Any],
                        talkgroups: dict[str, str] | None = None) -> dict[str, Any]:
    """Reduce an engine snapshot to what must survive a restart."""
    tg = talkgroups or {}
    ports = {name: {"profile": p.get("profile"), "talkgroup": tg.get(name, p.get("talkgroup")),
                    "rx_gain_db": p.get("rx_gain_db", 0.0), "tx_gain_db": p.get("tx_gain_db", 0.0),
                    "rx_mute": p.get("rx_mute", False), "tx_mute": p.get("tx_mute", False)}
             for name, p in snap.get("ports", {}).items()}
    patches = {name: {"members": list(p["members"]), "mode": p["mode"],
                      "priorities": dict(p.get("priorities", {}))}
               for name, p in snap.get("patches", {}).items()}
    return {"schema": SCHEMA, "ports": ports, "patches": patches}


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp + fsync + rename + fsync of the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load_state(path: Path) -> dict[str, Any] | None:
    """Read a state file; ``None`` if there is none. Raises :class:`StateFileError`."""
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise StateFileError(f"{path}: cannot read state file: {exc}") from None
    if not isinstance(state, dict) or state.get("schema") != SCHEMA:
        raise StateFileError(f"{path}: schema is not {SCHEMA!r}")
    if not isinstance(state.get("ports", {}), dict) or not isinstance(state.get("patches", {}),
                                                                        dict):
        raise StateFileError(f"{path}: ports and patches must be mappings")
    return state


def restore_state(path: Path, gateway: GatewayLike) -> list[str]:
    """Apply a saved state to ``gateway.engine``; call it before the engine's first tick (or
    on the engine thread through ``Engine.submit`` when it already runs).

    Ports keep the site file's devices but get their saved profile (rebuilt through
    ``gateway.build_port``), talkgroup record, gains and mutes; the saved patches replace the
    site file's. Anything that no longer fits (a port gone from the site file, a profile
    removed) is skipped and reported in the returned list of warnings.

    Returns
    -------
    list of str
        One line per skipped item; empty when everything was restored.
    """
    from brug.gateway.engine import EngineError

    state = load_state(path)
    warnings: list[str] = []
    if state is None:
        return warnings
    eng = gateway.engine
    known = set(eng.port_names)
    for name, p in state.get("ports", {}).items():
        if name not in known or not isinstance(p, dict):
            warnings.append(f"{path}: ports.{name}: no such port in the site file, skipped")
            continue
        try:
            prof = p.get("profile")
            if prof and prof != eng.port_settings(name).profile:
                b = gateway.build_port(name, prof)
                if eng.running:     # restored between ticks of a running engine
                    b.port.start(eng.rate, eng.block)
                eng.replace_port(name, b.port, b.settings, b.squelch, b.ptt, start=False)
            eng.set_gain(name, rx_db=float(p.get("rx_gain_db", 0.0)),
                         tx_db=float(p.get("tx_gain_db", 0.0)))
            eng.set_mute(name, rx=bool(p.get("rx_mute", False)), tx=bool(p.get("tx_mute", False)))
            tg = p.get("talkgroup")
            if isinstance(tg, str) and tg:
                gateway.talkgroup_overrides[name] = tg
        except Exception as exc:  # noqa: BLE001 - one bad entry must not stop the restore
            warnings.append(f"{path}: ports.{name}: {exc}")
    saved = state.get("patches", {})
    for name in eng.patch_names():
        eng.delete_patch(name)
    for name, p in saved.items():
        try:
            eng.create_patch(name, p["members"], mode=p.get("mode", "half_duplex"),
                             priorities=p.get("priorities") or {})
        except (EngineError, KeyError, TypeError) as exc:
            warnings.append(f"{path}: patches.{name}: {exc}")
    return warnings
