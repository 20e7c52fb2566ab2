"""Typed values from YAML, ``--set`` strings and form fields: the coercion every settings dataclass uses (a leaf).

:func:`build` makes a dataclass from a nested dict, refusing unknown keys and converting each value to its field's
type hint (``int``, ``float``, ``bool``, ``str``, lists, mappings, optional values, nested dataclasses) with an error
that names the key; :func:`parse_value` reads one ``--set`` value. Used by :mod:`shapshift.config` and by the
estimators' ``Options`` (:mod:`shapshift.explainers.registry`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import yaml

from .errors import ConfigError


def unescape(text: str) -> str:
    r"""``\n`` and ``\t`` typed as two characters (a shell argument, a form field) become a newline and a tab."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def parse_value(raw: str, *, text: bool = False) -> Any:
    """A ``--set`` value: YAML (``4``, ``null``, ``[a, b]``, ``"quoted"``), else the plain text itself.

    Text that is not valid YAML (``Review: {input}\nSentiment:`` reads as a broken mapping) is taken
    as written, with ``\n`` and ``\t`` typed as two characters turned into a newline and a tab.
    ``text``: the key holds text (a template, an instruction, a path): the value is taken as typed
    (``\n`` a newline) unless it is quoted (then YAML reads it) or ``null``/``~`` (none), so that
    ``Review: {input}`` or ``yes`` are not read as a mapping or a boolean.
    """
    if not raw.strip():
        return None
    if text and raw.strip() not in ("null", "~", "Null", "NULL") and raw.strip()[0] not in "\"'":
        return unescape(raw)
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return unescape(raw)


def build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"Config section {where or 'top level'} must be a mapping, got {values!r}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"Unknown config key(s) {', '.join(where + k for k in unknown)}.",
            f"Valid keys{' in ' + where.rstrip('.') if where else ''}: {', '.join(sorted(names))}.",
        )
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = coerce(hints[name], value, where + name)
    return cls(**kwargs)


def coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(inner[0], value, key)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key + ".")
    if origin is list:
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"Config key {key} must be a list, got {value!r}.")
        return [coerce(args[0], v, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"Config key {key} must be a mapping, got {value!r}.")
        if args and args[1] is Any:  # typed later (explain.options: by each estimator's Options)
            return {str(k): v for k, v in value.items()}
        return {str(k): str(v) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        if not isinstance(value, bool):
            raise ConfigError(f"Config key {key} must be true or false, got {value!r}.")
        return value
    if tp in (int, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            out = tp(value)
            if tp is int and float(value) != out:
                raise ValueError
            return out
        except (TypeError, ValueError):
            raise ConfigError(f"Config key {key} must be a number ({tp.__name__}), got {value!r}.") from None
    if tp is str:
        if value is None or isinstance(value, (dict, list)):
            raise ConfigError(f"Config key {key} must be text, got {value!r}.")
        return str(value)
    return value
