"""Append-only audit log of state-changing control requests (JSON lines).

One line per request that could change state, refused or not: who (key name and role), what
(request type and body), when (UTC ISO time and Unix seconds), and the outcome (``ok`` or the
error code). Each line is flushed and fsync-ed before the server sends its reply, so a reply
the client saw is always on disk.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


class AuditLog:
    """Append JSON lines to ``path`` (created with its folder; never truncated)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def write(self, *, user: str, role: str, type_: str, body: dict[str, Any],
              outcome: str, message: str = "", request_id: str | None = None) -> None:
        """Append one record and fsync it (a few ms on slow disks; control thread only)."""
        now = time.time()
        rec = {"ts": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds"),
               "unix": round(now, 3), "user": user, "role": role, "type": type_,
               "id": request_id, "body": body, "outcome": outcome}
        if message:
            rec["message"] = message
        self._f.write(json.dumps(rec, default=str) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Read every record back (tests, `brug ctl`)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
