"""Command-line options derived from the library's config dataclasses.

Every field of a dataclass becomes an option (name, type and the "(default: X)" of the help
text come from the field; the help text from a per-field mapping). Generated options default
to ``None`` = "not set here", so :func:`pathfl.config.merge_cli_and_yaml` can tell what the
command line set, and an option set nowhere keeps the library's default.

Help texts that list registry names (models, heads, readers, encoders, aggregators) hold the
marker ``{choices}``; :func:`listing_command` fills it when help is printed, so the registries
(and torch) are only imported for ``--help``."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import click
import typer
from typer.core import TyperCommand, TyperGroup

F = TypeVar("F", bound=Callable[..., Any])
CHOICES = "{choices}"


def field_default(f: dataclasses.Field[Any]) -> Any:
    """The default value of dataclass field ``f``."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _base_type(hint: Any) -> Any:
    """``X`` for ``X | None``; other hints unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def field_options(
    cls: type,
    *,
    help: Mapping[str, str],
    rename: Mapping[str, str] | None = None,
    skip: Iterable[str] = (),
    flags: Mapping[str, str] | None = None,
    choices: Iterable[str] = (),
) -> list[inspect.Parameter]:
    """One keyword-only typer option per field of dataclass ``cls`` except ``skip``.

    ``rename`` maps field → option name (``--`` + dashes), ``flags`` option name → the flag
    declaration (e.g. ``"--remove-pen/--keep-pen"``; booleans get ``--x/--no-x`` otherwise),
    ``choices``: fields whose help gets the registry names (``{choices}``). A field without a
    ``help`` entry is an error, so a new field cannot be left out of the CLI silently."""
    rename, flags, skip = dict(rename or {}), dict(flags or {}), set(skip)
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        name = rename.get(f.name, f.name)
        hint = _base_type(hints[f.name])
        decl = flags.get(name, "--" + name.replace("_", "-"))
        if hint is bool and "/" not in decl:
            decl = f"{decl}/--no-{decl[2:]}"
        text = help[f.name] + (f": {CHOICES}" if f.name in set(choices) else "")
        option = typer.Option(None, decl, help=f"{text} (default: {field_default(f)})")
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=hint | None
            )
        )
    return params


def with_options(*groups: list[inspect.Parameter]) -> Callable[[F], F]:
    """Decorator: the command takes its own parameters plus the generated ``groups`` (it
    receives those through ``**kwargs``); typer and ``inspect.signature`` see them all, the
    generated ones before ``--config``."""

    def deco(fn: F) -> F:
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        at = next((i for i, p in enumerate(own) if p.name == "config"), len(own))
        generated = [p for g in groups for p in g]
        fn.__signature__ = sig.replace(  # type: ignore[attr-defined]
            parameters=[
                *own[:at],
                *generated,
                *(p.replace(kind=p.KEYWORD_ONLY) for p in own[at:]),
            ]
        )
        return fn

    return deco


def listing_command(choices: Mapping[str, Callable[[], Iterable[str]]]) -> type[TyperCommand]:
    """A typer command class that replaces ``{choices}`` in the help of option ``name`` by
    the names ``choices[name]()`` returns, when the help is printed."""

    class ListingCommand(TyperCommand):
        def format_help(self, ctx: Any, formatter: Any) -> None:
            for p in self.params:
                text = getattr(p, "help", None)
                if p.name in choices and text and CHOICES in text:
                    names = " | ".join(choices[str(p.name)]())
                    p.help = text.replace(CHOICES, names)  # type: ignore[attr-defined]
            super().format_help(ctx, formatter)

    return ListingCommand


def registry_names(module: str, function: str) -> Callable[[], list[str]]:
    """A callable returning ``module.function()`` (names of a registry); the module is imported
    only when it is called."""

    def names() -> list[str]:
        return list(getattr(importlib.import_module(module), function)())

    return names


def split_list(value: str | list[str] | None) -> list[str]:
    """A comma-separated string (command line) or a list (YAML) → list of non-empty items."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [s.strip() for s in items if s.strip()]


def usage_error(msg: str) -> typer.Exit:
    """Print ``error: msg`` in red on stderr; the returned exit (code 2) is to be raised."""
    typer.secho(f"error: {msg}", err=True, fg="red")
    return typer.Exit(2)


class CommandGroup(TyperGroup):
    """A command group (``typer.Typer(cls=CommandGroup)``) whose unknown-command error says
    "Did you mean 'x'?" once: Typer adds it to the message and Click (≥ 8.4) again when it
    prints the error; Click's is kept."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            head, sep, _ = e.message.partition(" Did you mean ")
            if sep and getattr(e, "possibilities", None):
                e.message = head.rstrip(".") + "."
            raise
