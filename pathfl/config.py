"""YAML configuration: every CLI option can also come from a YAML file (``--config``);
values given on the command line win over the file, the file wins over defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
import yaml


class ConfigError(ValueError):
    """A configuration file is missing, malformed, or names unknown options."""


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def merge_cli_and_yaml(
    ctx: click.Context, values: dict[str, Any], config_path: str | os.PathLike[str] | None
) -> dict[str, Any]:
    """Return ``values`` with entries not given explicitly on the command line replaced by the
    YAML file's. ``values`` maps parameter names to the values typer passed in."""
    if config_path is None:
        return dict(values)
    file_values = load_yaml(config_path)
    unknown = sorted(set(file_values) - set(values))
    if unknown:
        raise ConfigError(
            f"{config_path}: unknown option(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(values))}"
        )
    merged = dict(values)
    for name, value in file_values.items():
        source = ctx.get_parameter_source(name)
        if source is None or source == click.core.ParameterSource.DEFAULT:
            merged[name] = value
    return merged
