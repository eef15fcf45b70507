"""YAML loading that remembers where every key came from, and the one error type for it.

Configuration errors must name the file, the line and the key path (``squelch.type``), never
show a traceback. :func:`load_yaml` therefore composes the YAML node tree (``yaml.compose``
keeps node marks), builds plain Python data from it and returns a second mapping from dotted
key path to 1-based line number. The site-file loader in ``brug.gateway`` reuses both.

Examples
--------
>>> data, pos = load_yaml_text("audio:\\n  rate_hz: 48000\\n", "x.yaml")
>>> data["audio"]["rate_hz"], pos["audio.rate_hz"]
(48000, 2)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode


class ConfigError(ValueError):
    """A user mistake in a configuration file: ``file:line: keypath: message``.

    Parameters
    ----------
    path:
        File as the user should see it (relative where possible).
    line:
        1-based line number, 0 when unknown.
    keypath:
        Dotted key path (``squelch.type``, ``pei.init[2]``); empty for file-level errors.
    message:
        What is wrong and, for choices, the valid values. When the message already starts
        with the key path it is not repeated.
    """

    user_error = True

    def __init__(self, path: str | Path, line: int, keypath: str, message: str) -> None:
        self.path = display_path(path)
        self.line = line
        self.keypath = keypath
        self.message = message
        where = f"{self.path}:{line}" if line else self.path
        if keypath and not message.startswith(keypath):
            text = f"{where}: {keypath}: {message}"
        else:
            text = f"{where}: {message}"
        super().__init__(text)


#: Dotted key path -> 1-based line of the key (or of the item, for sequences).
Positions = dict[str, int]

_PKG_ROOT = Path(__file__).resolve().parent.parent


def display_path(path: str | Path) -> str:
    """Return ``path`` relative to the working directory or the package root where possible."""
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    for base in (Path.cwd(), _PKG_ROOT):
        try:
            return str(p.resolve().relative_to(base.resolve()))
        except ValueError:
            continue
    return str(p)


def join_key(prefix: str, key: object) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else str(key)


def _walk(loader: yaml.SafeLoader, node: Node, prefix: str, pos: Positions,
          path: str) -> Any:
    if isinstance(node, MappingNode):
        out: dict[Any, Any] = {}
        for knode, vnode in node.value:
            if knode.tag == "tag:yaml.org,2002:merge":
                raise ConfigError(path, knode.start_mark.line + 1, prefix,
                                  "YAML merge keys ('<<') are not supported; use 'extends'")
            key = loader.construct_object(knode, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                raise ConfigError(path, knode.start_mark.line + 1, prefix,
                                  f"a key must be a plain scalar, not {type(key).__name__}")
            kp = join_key(prefix, key)
            if key in out:
                raise ConfigError(path, knode.start_mark.line + 1, kp,
                                  f"{kp}: duplicate key (first on line {pos.get(kp, 0)})")
            pos[kp] = knode.start_mark.line + 1
            out[key] = _walk(loader, vnode, kp, pos, path)
        return out
    if isinstance(node, SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            kp = join_key(prefix, i)
            pos[kp] = item.start_mark.line + 1
            items.append(_walk(loader, item, kp, pos, path))
        return items
    assert isinstance(node, ScalarNode)
    return loader.construct_object(node, deep=True)


def load_yaml_text(text: str, path: str | Path) -> tuple[Any, Positions]:
    """Parse YAML ``text`` (named ``path`` in errors); return ``(data, positions)``.

    Raises
    ------
    ConfigError
        On a YAML syntax error (with its line), duplicate keys, merge keys or more than one
        document.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        pos: Positions = {}
        data = None if node is None else _walk(loader, node, "", pos, str(path))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        what = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(path, line, "", f"YAML syntax error: {what}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, 0, "", f"YAML error: {exc}") from None
    finally:
        loader.dispose()
    return data, pos


def load_yaml(path: str | Path) -> tuple[Any, Positions]:
    """Read and parse the YAML file ``path``; return ``(data, positions)``.

    ``positions`` maps dotted key paths (``"ptt.type"``, ``"pei.init[0]"``) to 1-based lines.

    Raises
    ------
    ConfigError
        When the file cannot be read (line 0) or is not valid YAML.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(path, 0, "", f"cannot read file: {reason}") from None
    return load_yaml_text(text, path)
