"""Floor control: who may talk in a patch, and who hears whom.

This module is pure logic: no audio, no clocks, no threads. The engine calls
:meth:`Floor.update` once per tick with the effective COR of every member (already masked for
ports the gateway is transmitting on) and gets back what changed. Times are engine samples.

Half duplex (radio semantics)
    The first member whose COR opens takes the floor; the gateway keys every other idle member
    and routes the holder's audio to them. A member that keys up while another holds the floor
    is *blocked*: not forwarded, not keyed while it is busy, and reported once per over. A
    blocked over stays blocked until that member's COR drops, even when the holder releases
    first: forwarding its remainder would put a half sentence (or, with pre-roll, seconds-old
    audio) on the air, and an analog or TETRA talker cannot be told that it now has the floor.
    The talker keys up again and gets it. The same holds for a holder that was pre-empted. A member
    with strictly higher priority pre-empts the holder. If two members open in the same tick the
    higher priority wins, then the earlier COR edge, then member order. A time-out timer (TOT)
    ends an over that lasts too long; the holder then stays locked out until its COR drops
    (a stuck transmitter must not re-take the floor at once).

Full duplex (console and IP ports)
    Every member whose COR is open talks; each member hears the sum of all talkers but itself
    (an N-1 mix) and is keyed while anybody else talks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum


class Mode(StrEnum):
    HALF_DUPLEX = "half_duplex"
    FULL_DUPLEX = "full_duplex"


class FloorError(ValueError):
    """A patch definition that cannot work (a user mistake)."""

    user_error = True


@dataclass(frozen=True, slots=True)
class FloorChange:
    """Something a technician wants to know about.

    ``kind`` is ``"floor"`` (holder changed; ``port`` is the new holder or ``None``),
    ``"blocked"`` (``port`` keyed up while ``holder`` had the floor), ``"preempt"`` (``port``
    took the floor from ``holder`` by priority), ``"tot"`` (``port``'s over hit the time-out
    timer and was cut), ``"talkers"`` (full duplex: the set of talkers changed).
    """

    kind: str
    port: str | None
    holder: str | None = None
    info: str = ""
    talkers: tuple[str, ...] = ()


@dataclass
class Floor:
    """Floor state of one patch.

    Parameters
    ----------
    name:
        Patch name (used in event topics).
    members:
        2..N port names.
    mode:
        ``half_duplex`` (default) or ``full_duplex``.
    priorities:
        Port -> priority (higher wins; default 0).
    tot_samples:
        Port -> time-out timer of an over from that port, in engine samples (0 = none).
    """

    name: str
    members: list[str]
    mode: Mode = Mode.HALF_DUPLEX
    priorities: dict[str, int] = field(default_factory=dict)
    tot_samples: dict[str, int] = field(default_factory=dict)
    holder: str | None = None
    holder_since: int = 0
    talkers: tuple[str, ...] = ()
    _blocked: set[str] = field(default_factory=set)
    _tot_locked: set[str] = field(default_factory=set)
    _full_since: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mode = Mode(self.mode)
        validate_members(self.name, self.members)

    # -- configuration ---------------------------------------------------------------------
    def priority(self, port: str) -> int:
        return self.priorities.get(port, 0)

    def remove_member(self, port: str) -> list[FloorChange]:
        """Take ``port`` out of the patch; releases the floor if it held it."""
        self.members.remove(port)
        self._blocked.discard(port)
        self._tot_locked.discard(port)
        changes: list[FloorChange] = []
        if self.holder == port:
            self.holder = None
            changes.append(FloorChange("floor", None, port, "holder left the patch"))
        if port in self.talkers:
            self.talkers = tuple(p for p in self.talkers if p != port)
            if self.mode is Mode.FULL_DUPLEX:
                changes.append(FloorChange("talkers", None, talkers=self.talkers,
                                           info="member left"))
        return changes

    # -- the state machine -----------------------------------------------------------------
    def update(self, t: int, cor: Mapping[str, bool],
               cor_since: Mapping[str, int]) -> list[FloorChange]:
        """Advance to engine time ``t`` given each member's effective COR.

        ``cor_since[p]`` is the sample at which ``p``'s COR last opened (for first-come order
        within one tick). Returns the changes, in the order they happened.
        """
        changes: list[FloorChange] = []
        # a TOT lock and a blocked over last until that port's COR drops
        if self._tot_locked:
            self._tot_locked -= {p for p in self._tot_locked if not cor.get(p, False)}
        if self._blocked:
            self._blocked -= {p for p in self._blocked if not cor.get(p, False)}
        active = [p for p in self.members if cor.get(p, False) and p not in self._tot_locked]
        if self.mode is Mode.FULL_DUPLEX:
            talkers = tuple(active)
            if talkers != self.talkers:
                self.talkers = talkers
                changes.append(FloorChange("talkers", None, talkers=talkers, info="full duplex"))
            self._check_tot_full(t, changes)
            return changes

        # half duplex
        if self.holder is not None and self.holder not in active:
            prev = self.holder
            self.holder = None
            changes.append(FloorChange("floor", None, prev, "cor closed"))
        if self.holder is not None:
            tot = self.tot_samples.get(self.holder, 0)
            if tot and t - self.holder_since >= tot:
                prev = self.holder
                self._tot_locked.add(prev)
                self.holder = None
                active.remove(prev)
                changes.append(FloorChange("tot", prev, prev,
                                           f"time-out timer {tot} samples"))
                changes.append(FloorChange("floor", None, prev, "tot"))
        free = [p for p in active if p not in self._blocked]
        contenders = free if len(free) < 2 else sorted(
            free, key=lambda p: (-self.priority(p), cor_since.get(p, t), self.members.index(p)))
        if self.holder is None:
            if contenders:
                winner = contenders[0]
                self.holder, self.holder_since = winner, t
                self._blocked.discard(winner)
                changes.append(FloorChange("floor", winner, None, "first come"
                                           if len(contenders) == 1 else
                                           f"won against {', '.join(contenders[1:])}"))
        else:
            best = contenders[0] if contenders else None
            if best is not None and best != self.holder and \
                    self.priority(best) > self.priority(self.holder):
                prev = self.holder
                self.holder, self.holder_since = best, t
                self._blocked.discard(best)
                changes.append(FloorChange("preempt", best, prev,
                                           f"priority {self.priority(best)} > "
                                           f"{self.priority(prev)}"))
                changes.append(FloorChange("floor", best, prev, "pre-empted"))
        # blocked talkers: busy members that are not the holder, reported once per over
        # (with no holder every busy member is already blocked: a free one would have won)
        busy = {p for p in active if p != self.holder}
        if self.holder is not None and not busy <= self._blocked:
            for p in self.members:
                if p in busy and p not in self._blocked:
                    changes.append(FloorChange("blocked", p, self.holder,
                                               f"floor held by {self.holder}"))
        self._blocked |= busy
        self.talkers = (self.holder,) if self.holder else ()
        return changes

    def _check_tot_full(self, t: int, changes: list[FloorChange]) -> None:
        # in full duplex a talker's over starts when it joins the talkers; track per talker
        for p in self.talkers:
            since = self._full_since.setdefault(p, t)
            tot = self.tot_samples.get(p, 0)
            if tot and t - since >= tot:
                self._tot_locked.add(p)
                changes.append(FloorChange("tot", p, None, f"time-out timer {tot} samples"))
        for p in list(self._full_since):
            if p not in self.talkers:
                del self._full_since[p]
        if any(c.kind == "tot" for c in changes):
            self.talkers = tuple(p for p in self.talkers if p not in self._tot_locked)
            changes.append(FloorChange("talkers", None, talkers=self.talkers, info="tot"))

    # -- routing -----------------------------------------------------------------------------
    def routes(self) -> dict[str, tuple[str, ...]]:
        """Destination -> sources it must hear now (only members with something to hear).

        Busy members (COR open but not the holder) are not keyed: a half-duplex terminal that
        is receiving cannot transmit.
        """
        if self.mode is Mode.FULL_DUPLEX:
            out: dict[str, tuple[str, ...]] = {}
            for d in self.members:
                srcs = tuple(s for s in self.talkers if s != d)
                if srcs:
                    out[d] = srcs
            return out
        if self.holder is None:
            return {}
        return {d: (self.holder,) for d in self.members
                if d != self.holder and d not in self._blocked}

    @property
    def blocked(self) -> frozenset[str]:
        return frozenset(self._blocked)


def validate_members(name: str, members: Sequence[str]) -> None:
    """Raise :class:`FloorError` unless ``members`` names 2..N distinct ports."""
    if len(members) < 2:
        raise FloorError(f"patch {name!r}: needs at least 2 members, got {len(members)}")
    dup = {m for m in members if list(members).count(m) > 1}
    if dup:
        raise FloorError(f"patch {name!r}: member listed twice: {', '.join(sorted(dup))}")
