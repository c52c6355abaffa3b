"""YAML configuration, merged the same way by every command: values given on the command line
win over the YAML file (``--config``), the file wins over the library defaults. Keys may be
written with dashes or underscores; a key the command does not know is an error that names the
file and lists the valid keys (exit code 2 under the CLI)."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file is missing, malformed, or names unknown options."""


def normalize_keys(data: Mapping[Any, Any]) -> dict[str, Any]:
    """``data`` with every key a string, dashes replaced by underscores."""
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def check_keys(keys: Iterable[str], valid: Iterable[str], *, source: str) -> None:
    """Raise :class:`ConfigError` naming ``source`` and listing ``valid`` if any of ``keys``
    is not valid."""
    valid = set(valid)
    unknown = sorted(set(keys) - valid)
    if unknown:
        raise ConfigError(
            f"{source}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
        )


def dataclass_from_dict(cls: type[T], d: Mapping[str, Any], *, what: str) -> T:
    """``cls(**d)`` for a dataclass, refusing keys that are not its fields with a
    ``ValueError`` that names ``what`` and lists the valid keys."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; valid: {sorted(names)}")
    return cls(**dict(d))


def load_yaml(
    path: str | os.PathLike[str], *, valid: Iterable[str] | None = None
) -> dict[str, Any]:
    """The mapping in YAML file ``path`` (keys normalised); with ``valid``, unknown keys are
    refused."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of option: value")
    data = normalize_keys(data)
    if valid is not None:
        check_keys(data, valid, source=str(path))
    return data


def merge_config(
    config_path: str | os.PathLike[str] | None,
    *,
    given: Mapping[str, Any],
    valid: Iterable[str],
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The one merge of every command: ``given`` (set on the command line) > the YAML file at
    ``config_path`` (keys checked against ``valid``) > ``defaults``."""
    from_file = load_yaml(config_path, valid=valid) if config_path is not None else {}
    return {**(defaults or {}), **from_file, **given}


def merge_cli_and_yaml(
    ctx: click.Context, config_path: str | os.PathLike[str] | None, *, exclude: str = "config"
) -> dict[str, Any]:
    """:func:`merge_config` for a click/typer command: the parameters of ``ctx`` the user set
    explicitly are ``given``, the others are the defaults (``exclude``: the --config option)."""
    values = {k: v for k, v in ctx.params.items() if k != exclude}
    given = {
        k: v
        for k, v in values.items()
        if ctx.get_parameter_source(k) not in (None, click.core.ParameterSource.DEFAULT)
    }
    return merge_config(config_path, given=given, valid=values, defaults=values)


def require(values: Mapping[str, Any], *names: str) -> None:
    """Refuse a merged configuration that lacks one of the options ``names``."""
    for name in names:
        if values.get(name) is None:
            raise ConfigError(
                f"--{name.replace('_', '-')} is required (or `{name}:` in the --config file)"
            )


def _cast(hint: Any, value: Any) -> Any:
    """``value`` as the type ``hint`` of a dataclass field (``X | None`` keeps a None)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(hint)):
            return None
        hint = args[0] if len(args) == 1 else hint
    return hint(value) if hint in (int, float, str, bool, Path) else value


def dataclass_from(
    cls: type, values: Mapping[str, Any], *, fields: Mapping[str, str], what: str = ""
) -> Any:
    """``cls`` built from the merged options ``values``: ``fields`` maps option → field of
    ``cls``; each value is converted to the field's type (YAML may give ``1`` for ``1.0``).
    A bad value is a :class:`ConfigError` "invalid ``what``: ..."."""
    hints, what = typing.get_type_hints(cls), what or cls.__name__
    kwargs = {}
    for option, f in fields.items():
        try:
            kwargs[f] = _cast(hints[f], values[option])
        except (TypeError, ValueError) as e:
            raise ConfigError(f"invalid {what}: {option}={values[option]!r} ({e})") from e
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid {what}: {e}") from e
