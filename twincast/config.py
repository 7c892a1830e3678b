"""Layered configuration: dataclass defaults → TOML file → ``TWINCAST_*`` environment → CLI flags.

Built once at the entry point; each component then receives only its own frozen section. Nothing below the
entry point reads argparse or the environment.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from twincast.errors import InputError

T = TypeVar("T")


def load_toml(path: Path | None) -> dict[str, Any]:
    """Read a TOML config file, or return an empty mapping when no file is given.

    Raises:
        InputError: the file is missing or is not valid TOML.
    """
    if path is None:
        return {}
    if not path.is_file():
        raise InputError(f"config file {path} does not exist; expected a TOML file")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"config file {path} is not valid TOML: {exc}") from exc


def build_config(
    cls: type[T],
    *,
    section: str,
    toml: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: T | None = None,
) -> T:
    """Build the frozen dataclass ``cls`` from its layered sources.

    Args:
        cls: a dataclass whose ``__post_init__`` validates its own fields.
        section: the TOML table and environment infix, e.g. ``serve`` reads ``[serve]`` and
            ``TWINCAST_SERVE_PORT``.
        toml: the whole parsed TOML document.
        env: environment variables (pass ``os.environ`` from the entry point).
        overrides: CLI flags; ``None`` values mean "not given" and are skipped.
        base: starting values instead of the dataclass defaults (e.g. a named preset).

    Raises:
        InputError: an unknown key or a value that cannot be read as the field's type.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {field.name for field in dataclasses.fields(cls)}
    values: dict[str, Any] = {} if base is None else {f.name: getattr(base, f.name) for f in dataclasses.fields(cls)}

    table = (toml or {}).get(section, {})
    if not isinstance(table, Mapping):
        raise InputError(f"config [{section}] must be a table, got {type(table).__name__}")
    for key, raw in table.items():
        if key not in names:
            raise InputError(f"config [{section}] has unknown key {key!r}; known keys: {sorted(names)}")
        values[key] = _coerce(raw, hints[key], f"[{section}].{key}")

    prefix = f"TWINCAST_{section.upper()}_"
    for var, raw in (env or {}).items():
        if not var.startswith(prefix):
            continue
        key = var[len(prefix) :].lower()
        if key not in names:
            raise InputError(f"environment variable {var} names no {section} setting; known: {sorted(names)}")
        values[key] = _coerce(raw, hints[key], var)

    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        if key not in names:
            raise InputError(f"unknown {section} setting {key!r}")
        values[key] = _coerce(raw, hints[key], f"--{key.replace('_', '-')}")
    return cls(**values)


def _coerce(raw: Any, hint: Any, where: str) -> Any:
    """Read ``raw`` (from TOML, an env string or a CLI value) as the type ``hint``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if raw is None or (isinstance(raw, str) and raw.lower() in ("", "none")):
            if type(None) in args:
                return None
        inner = [arg for arg in args if arg is not type(None)]
        return _coerce(raw, inner[0], where)
    if origin is tuple:
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        return tuple(_coerce(item, args[0], where) for item in items if item != "")
    try:
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if hint is int:
            if isinstance(raw, bool):
                raise ValueError(raw)
            return int(raw)
        if hint is float:
            return float(raw)
        if hint is str:
            return str(raw)
        if hint is Path:
            return Path(raw)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: cannot read {raw!r} as {getattr(hint, '__name__', hint)}") from exc
    return raw
