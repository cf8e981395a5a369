"""One typed loader for every config dataclass: dicts from JSON/YAML in, dataclasses out.

Every config in vlm (``ModelConfig`` and its towers, ``PreprocessConfig``,
``TrainConfig``/``DataConfig``, ``GenerationConfig``, checkpoint metadata) is a
plain dataclass with type hints. ``from_dict`` builds one from a nested dict,
driven by the real hints (``typing.get_type_hints``):

- strict keys: an unknown key is refused, named with its file (and a close
  match when there is one);
- values converted to the field's type, or refused in one line naming the file
  and the dotted key: ``ckpt/config.json: vision.width='abc': expected a whole number``.
  YAML reads ``3e-4`` as a string, so numeric strings are numbers where a float
  is expected; a whole float (``64.0``) is a whole number; a single string is a
  one-item list where a list is expected (``freeze=visual``);
- nested dataclass fields read nested sections; ``Optional`` allows ``null``;
- the dataclass's own ``__post_init__`` checks (ranges, cross-field rules) run
  once, and their ``ValueError`` gets the same ``FILE: section.`` prefix.

``dotted_overrides`` turns ``key=value`` strings into a nested dict (values are
YAML scalars: ``steps=100``, ``freeze=[visual]``, ``init_from=null``) and
``merge`` lays it over the file's dict, so overrides meet the same checks.

    cfg = from_dict(ModelConfig, json.loads(text), source="ckpt/config.json")
    raw = merge(yaml.safe_load(text), dotted_overrides(["lr=3e-4", "data.batch_size=8"]))

Only the standard library and ``vlm.errors`` are imported (yaml inside ``parse_value``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Iterable, Literal, TypeVar, Union

from vlm.errors import VlmError

T = TypeVar("T")

__all__ = ["ConfigError", "ConfigFileNotFound", "dotted_overrides", "from_dict", "merge", "parse_overrides", "parse_value",
           "set_dotted", "to_dict"]


class ConfigError(VlmError, ValueError):
    """A config value or key that cannot be used; ``str()`` is one line naming the file and key
    (``cli``, when given, is the same line naming the command-line flag that gave the file)."""


class ConfigFileNotFound(ConfigError, FileNotFoundError):
    """The config file itself does not exist: a ``FileNotFoundError`` too."""


def to_dict(obj) -> dict[str, Any]:
    """A dataclass as a JSON-ready nested dict (tuples become lists)."""
    return _plain(dataclasses.asdict(obj))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def from_dict(cls: type[T], raw: Any, source: str, prefix: str = "", ignore: Iterable[str] = ()) -> T:
    """Build dataclass ``cls`` from ``raw``; keys in ``ignore`` are skipped (e.g. ``description``).

    ``prefix`` is the dotted path of this section in the file (``"vision."``), used in messages.
    Raises ``ConfigError`` naming ``source`` and the key.
    """
    if not isinstance(raw, dict):
        where = f"{prefix[:-1]}={_short(raw)}: expected" if prefix else "expected"
        raise ConfigError(f"{source}: {where} a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    ignore = set(ignore)
    kwargs = {}
    for key, value in raw.items():
        if key in ignore:
            continue
        if key not in fields:
            raise ConfigError(f"{source}: unknown key {prefix}{key}{_suggest(str(key), fields)}")
        kwargs[key] = _convert(hints[key], value, f"{prefix}{key}", source)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # the dataclass's own checks; messages start with a field name
        raise ConfigError(f"{source}: {prefix}{e}") from None


def _suggest(key: str, fields) -> str:
    close = difflib.get_close_matches(key, list(fields), n=1)
    if close:
        return f" (did you mean {close[0]}?)"
    return f" (known: {', '.join(fields)})"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _convert(tp, value, key: str, source: str):
    """``value`` as type ``tp``, or a ConfigError ``SOURCE: KEY=VALUE: expected ...``."""
    def refuse(what: str):
        raise ConfigError(f"{source}: {key}={_short(value)}: expected {what}")

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(options[0], value, key, source)
        for option in options:
            try:
                return _convert(option, value, key, source)
            except ConfigError:
                continue
        refuse(" or ".join(_name(o) for o in options))
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
        refuse(f"one of {', '.join(repr(a) for a in args)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            refuse("a section (a mapping of keys to values)")
        return from_dict(tp, value, source, prefix=f"{key}.")
    if value is None:
        refuse(_name(tp))
    if tp is bool:
        if isinstance(value, bool):
            return value
        refuse("true or false")
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        refuse("a whole number")
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                refuse("a number")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        refuse("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        refuse("a string")
    if tp in (list, tuple) or origin in (list, tuple):
        if isinstance(value, str) and (tp is list or origin is list):
            value = [value]  # freeze=visual means freeze=[visual]
        if not isinstance(value, (list, tuple)):
            refuse("a list")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                refuse(f"{len(args)} values")
            items = [_convert(a, v, f"{key}[{i}]", source) for i, (a, v) in enumerate(zip(args, value))]
        else:
            item_type = args[0] if args else Any
            items = [_convert(item_type, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if (tp is tuple or origin is tuple) else items
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        refuse("a mapping of keys to values")
    raise TypeError(f"configio: unsupported field type {tp!r} for {key}")  # a bug in a dataclass


def _name(tp) -> str:
    return {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp)))


# ----------------------------------------------------------------------------- overrides


def parse_value(text: str) -> Any:
    """A ``key=value`` value as YAML reads a scalar or a flow list: ``3``, ``[visual, text]``, ``null``."""
    import yaml

    if text == "":
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # e.g. "a: b" — kept as the string it is


def parse_overrides(items: Iterable[str], where: str = "override") -> list[tuple[str, Any]]:
    """``["a.b=1", "c=x"]`` -> ``[("a.b", 1), ("c", "x")]``; a malformed item is a ConfigError."""
    pairs = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{where} {item!r}: expected key=value")
        key, text = item.split("=", 1)
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{where} {item!r}: expected key=value with a dotted key")
        pairs.append((key, parse_value(text)))
    return pairs


def dotted_overrides(items: Iterable[str], where: str = "override") -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}``, to ``merge`` over a file's dict."""
    tree: dict[str, Any] = {}
    for key, value in parse_overrides(items, where):
        set_dotted(tree, key, value, where)
    return tree


def set_dotted(tree: dict, key: str, value: Any, where: str = "override") -> None:
    """Set ``tree[a][b] = value`` for ``key="a.b"``, making sections as needed."""
    parts = key.split(".")
    node = tree
    for n, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where} {key}: {'.'.join(parts[:n + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def merge(base: dict, patch: dict) -> dict:
    """``base`` with ``patch`` laid over it, section by section (neither is modified)."""
    out = dict(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def leaves(tree: dict, prefix: str = ""):
    """``(dotted key, value)`` for every non-mapping value of a nested dict."""
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v
