"""Networks, talkgroup catalogues and patch plans for joint operations.

One YAML file per network (``schema: brug-talkgroups/1``) under ``talkgroups/catalogues/``,
plus ``plans.yaml`` (``schema: brug-patch-plans/1``) naming which talkgroups a joint operation
joins: ``OP-HARBOUR: be_astrid/BE-TAC3 + nl_c2000/NL-OPS2 + ...``. Everything is validated
at load time against the catalogues; a mistake is a :class:`CatalogueError` with file, line
and key path (``plans.OP-HARBOUR.members[1]: 'nl_c2000/NL-OPS9' is not a talkgroup of
nl_c2000; known: NL-OPS1, NL-OPS2, ...``). See docs/profiles.md (talkgroups section).

This package does not import ``brug.hw_profiles``; its small line-tracking loader is below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

CATALOGUE_DIR = Path(__file__).resolve().parent / "catalogues"
TECHNOLOGIES = ("analog_fm", "dmr", "lte_mcptt", "tetra")
MODES = ("full_duplex", "half_duplex")
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


class CatalogueError(ValueError):
    """A mistake in a catalogue or patch plan: ``file:line: keypath: message``."""

    user_error = True

    def __init__(self, path: str | Path, line: int, keypath: str, message: str) -> None:
        self.path, self.line, self.keypath, self.message = str(path), line, keypath, message
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {keypath}: {message}" if keypath else f"{where}: {message}")


@dataclass(frozen=True)
class Talkgroup:
    """A talkgroup (TETRA: GSSI) or channel of one network. ``illustrative`` GSSIs are not
    the operator's real numbers."""

    network: str
    alias: str
    gssi: int | None
    purpose: str = ""
    illustrative: bool = True

    @property
    def ref(self) -> str:
        return f"{self.network}/{self.alias}"


@dataclass(frozen=True)
class Network:
    id: str
    name: str
    country: str
    technology: str
    mcc: int | None
    mnc: int | None
    talkgroups: dict[str, Talkgroup] = field(default_factory=dict)
    source: str = ""


@dataclass(frozen=True)
class PatchPlan:
    """Talkgroups a joint operation joins; ``members`` are ``(network, alias)`` pairs."""

    name: str
    members: tuple[tuple[str, str], ...]
    mode: str = "half_duplex"
    description: str = ""


@dataclass
class Catalogue:
    """All loaded networks and plans. Look-ups raise :class:`CatalogueError` naming the
    valid choices."""

    networks: dict[str, Network] = field(default_factory=dict)
    plans: dict[str, PatchPlan] = field(default_factory=dict)

    def talkgroup(self, network: str, alias: str, where: tuple[str, int, str] = ("", 0, "")
                  ) -> Talkgroup:
        """The talkgroup ``alias`` of ``network``; ``where`` = (file, line, keypath) for
        the error."""
        net = self.networks.get(network)
        if net is None:
            raise CatalogueError(*where, f"unknown network {network!r}; known: "
                                         f"{', '.join(sorted(self.networks))}")
        tg = net.talkgroups.get(alias)
        if tg is None:
            raise CatalogueError(*where, f"{network}/{alias!s} is not a talkgroup of "
                                         f"{network}; known: {', '.join(net.talkgroups)}")
        return tg

    def resolve(self, ref: str, where: tuple[str, int, str] = ("", 0, "")) -> Talkgroup:
        """``"be_astrid/BE-TAC3"`` -> :class:`Talkgroup`."""
        net, sep, alias = ref.strip().partition("/")
        if not sep:
            raise CatalogueError(*where, f"{ref!r} must be NETWORK/TALKGROUP")
        return self.talkgroup(net.strip(), alias.strip(), where)

    def plan(self, name: str) -> PatchPlan:
        try:
            return self.plans[name]
        except KeyError:
            raise CatalogueError("", 0, "", f"unknown patch plan {name!r}; known: "
                                            f"{', '.join(sorted(self.plans))}") from None


# ------------------------------------------------------------------ small YAML loader

def _load(path: Path) -> tuple[Any, dict[str, int]]:
    """YAML data plus key path -> line (1-based)."""
    try:
        loader = yaml.SafeLoader(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogueError(path, 0, "", f"cannot read file: {exc.strerror}") from None
    pos: dict[str, int] = {}

    def walk(node: Node, kp: str) -> Any:
        if isinstance(node, MappingNode):
            out = {}
            for kn, vn in node.value:
                key = loader.construct_object(kn, deep=True)
                sub = f"{kp}.{key}" if kp else str(key)
                if key in out:
                    raise CatalogueError(path, kn.start_mark.line + 1, sub, "duplicate key")
                pos[sub] = kn.start_mark.line + 1
                out[key] = walk(vn, sub)
            return out
        if isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                pos[f"{kp}[{i}]"] = item.start_mark.line + 1
            return [walk(item, f"{kp}[{i}]") for i, item in enumerate(node.value)]
        return loader.construct_object(node, deep=True)

    try:
        node = loader.get_single_node()
        return (walk(node, "") if node is not None else None), pos
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise CatalogueError(path, mark.line + 1 if mark else 0, "",
                             f"YAML syntax error: {exc.problem or exc.context}") from None
    finally:
        loader.dispose()


class _File:
    def __init__(self, path: Path, pos: dict[str, int]) -> None:
        self.path, self.pos = path, pos

    def err(self, kp: str, msg: str) -> CatalogueError:
        k = kp
        while k and k not in self.pos:
            k = k.rsplit(".", 1)[0] if "." in k else ""
        return CatalogueError(self.path, self.pos.get(k, 1), kp, msg)

    def get(self, d: dict[str, Any], kp: str, key: str, kind: type | tuple[type, ...],
            required: bool = True, default: Any = None) -> Any:
        if key not in d:
            if required:
                raise self.err(kp, f"missing key {key!r}")
            return default
        v = d[key]
        if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
            names = kind.__name__ if isinstance(kind, type) else "/".join(
                k.__name__ for k in kind)
            raise self.err(f"{kp}.{key}" if kp else key, f"{key}={v!r} must be {names}")
        return v


# ------------------------------------------------------------------ catalogue files

def load_network(path: str | Path) -> Network:
    """Load one network catalogue file (``schema: brug-talkgroups/1``)."""
    p = Path(path)
    data, pos = _load(p)
    f = _File(p, pos)
    if not isinstance(data, dict) or data.get("schema") != "brug-talkgroups/1":
        raise f.err("schema", "expected schema: brug-talkgroups/1")
    net = f.get(data, "", "network", dict)
    nid = f.get(net, "network", "id", str)
    tech = f.get(net, "network", "technology", str)
    if tech not in TECHNOLOGIES:
        raise f.err("network.technology", f"technology={tech!r} is not one of: "
                                          f"{', '.join(TECHNOLOGIES)}")
    country = f.get(net, "network", "country", str)
    if not re.fullmatch(r"[A-Z]{2}", country):
        raise f.err("network.country", f"country={country!r} must be an ISO 3166 code (BE)")
    mcc = f.get(net, "network", "mcc", int, required=tech == "tetra")
    mnc = f.get(net, "network", "mnc", int, required=tech == "tetra")
    if mcc is not None and not 0 <= mcc <= 999:
        raise f.err("network.mcc", f"mcc={mcc} is out of range [0, 999]")
    if mnc is not None and not 0 <= mnc <= 16383:
        raise f.err("network.mnc", f"mnc={mnc} is out of range [0, 16383] (14 bits)")
    illustrative = f.get(data, "", "illustrative", bool, required=False, default=True)
    groups: dict[str, Talkgroup] = {}
    seen_gssi: dict[int, str] = {}
    for i, tg in enumerate(f.get(data, "", "talkgroups", list)):
        kp = f"talkgroups[{i}]"
        if not isinstance(tg, dict):
            raise f.err(kp, "a talkgroup is a mapping with alias, gssi, purpose")
        for k in tg:
            if k not in ("alias", "gssi", "purpose"):
                raise f.err(f"{kp}.{k}", f"unknown key {k!r}; valid keys: alias, gssi, purpose")
        alias = f.get(tg, kp, "alias", str)
        if not _ALIAS.match(alias):
            raise f.err(f"{kp}.alias", f"alias={alias!r}: letters, digits, '-', '_', '.'")
        if alias in groups:
            raise f.err(f"{kp}.alias", f"alias {alias!r} appears twice")
        gssi = f.get(tg, kp, "gssi", int, required=tech == "tetra")
        if gssi is not None:
            if not 1 <= gssi <= 0xFFFFFF:
                raise f.err(f"{kp}.gssi", f"gssi={gssi} is out of range [1, 16777215] "
                                          "(24 bits)")
            if gssi in seen_gssi:
                raise f.err(f"{kp}.gssi", f"gssi {gssi} is also {seen_gssi[gssi]}")
            seen_gssi[gssi] = alias
        purpose = f.get(tg, kp, "purpose", str, required=False, default="")
        groups[alias] = Talkgroup(nid, alias, gssi, purpose, illustrative)
    return Network(nid, f.get(net, "network", "name", str, required=False, default=nid),
                   country, tech, mcc, mnc, groups, str(p))


def load_plans(path: str | Path, cat: Catalogue) -> dict[str, PatchPlan]:
    """Load patch plans (``schema: brug-patch-plans/1``), validated against ``cat``."""
    p = Path(path)
    data, pos = _load(p)
    f = _File(p, pos)
    if not isinstance(data, dict) or data.get("schema") != "brug-patch-plans/1":
        raise f.err("schema", "expected schema: brug-patch-plans/1")
    plans: dict[str, PatchPlan] = {}
    for name, body in f.get(data, "", "plans", dict).items():
        kp = f"plans.{name}"
        if isinstance(body, str):
            body = {"members": body}
        if not isinstance(body, dict):
            raise f.err(kp, "a plan is 'NET/TG + NET/TG ...' or a mapping with members")
        members = f.get(body, kp, "members", (list, str))
        if isinstance(members, str):
            items = [(m.strip(), f"{kp}.members") for m in members.split("+")]
        else:
            items = [(str(m), f"{kp}.members[{i}]") for i, m in enumerate(members)]
        refs: list[tuple[str, str]] = []
        for ref, mkp in items:
            tg = cat.resolve(ref, (str(p), f.err(mkp, "").line, mkp))
            if (tg.network, tg.alias) in refs:
                raise f.err(mkp, f"{ref} is listed twice")
            refs.append((tg.network, tg.alias))
        if len(refs) < 2:
            raise f.err(f"{kp}.members", "a patch joins at least 2 talkgroups")
        mode = f.get(body, kp, "mode", str, required=False, default="half_duplex")
        if mode not in MODES:
            raise f.err(f"{kp}.mode", f"mode={mode!r} is not one of: {', '.join(MODES)}")
        desc = f.get(body, kp, "description", str, required=False, default="")
        plans[str(name)] = PatchPlan(str(name), tuple(refs), mode, desc)
    return plans


def load_catalogue(directory: str | Path | None = None) -> Catalogue:
    """Load every network file and ``plans.yaml`` of ``directory`` (default: bundled)."""
    d = Path(directory) if directory is not None else CATALOGUE_DIR
    cat = Catalogue()
    for path in sorted(d.glob("*.yaml")):
        if path.name == "plans.yaml":
            continue
        net = load_network(path)
        if net.id in cat.networks:
            raise CatalogueError(path, 1, "network.id", f"network {net.id!r} is also "
                                                        f"defined in {cat.networks[net.id].source}")
        cat.networks[net.id] = net
    if (d / "plans.yaml").exists():
        cat.plans = load_plans(d / "plans.yaml", cat)
    return cat
