"""Settings from the environment and from a TOML file, for the `ndop` commands.

Every option of a command that opts in can also be given as `NDOP_<OPTION>` in the
environment (`--ca-file` is `NDOP_CA_FILE`; a flag is on for 1, true, yes or on) or, for
`ndop serve`, in a TOML file named by `--config` (`listen = "0.0.0.0:8443"`, keys spelled as
the options are, with - or _). The command line wins over the environment, and the
environment over the file.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from ndop_core.errors import UsageError

PREFIX: Final = "NDOP_"
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})


def variable(action: argparse.Action) -> str:
    return PREFIX + action.dest.upper()


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions  # argparse keeps no public list of a parser's actions
        if a.option_strings and not isinstance(a, argparse._HelpAction)
    ]


def _convert(action: argparse.Action, raw: object, source: str) -> object:
    if isinstance(action, argparse._StoreTrueAction):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise UsageError(f"{source} must be true or false")
    convert = action.type if callable(action.type) else str
    try:
        value = convert(raw if isinstance(raw, str) else str(raw))
    except (TypeError, ValueError):
        raise UsageError(f"{source} is not a valid {action.dest.replace('_', ' ')}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise UsageError(f"{source} must be one of: {choices}")
    return value


EXPLICIT: Final = "_given_on_command_line"


def _recording(kind: type[argparse.Action]) -> type[argparse.Action]:
    """`kind`, also noting in the namespace that its option was given on the command line."""

    class Recording(kind):  # type: ignore[valid-type, misc]
        def __call__(
            self,
            parser: argparse.ArgumentParser,
            namespace: argparse.Namespace,
            values: Any,
            option_string: str | None = None,
        ) -> None:
            super().__call__(parser, namespace, values, option_string)
            given = set(getattr(namespace, EXPLICIT, ()))
            setattr(namespace, EXPLICIT, given | {self.dest})

    return Recording


def environment_defaults(
    parser: argparse.ArgumentParser, environment: Mapping[str, str] | None = None
) -> None:
    """Take each option's default from NDOP_<OPTION> where it is set; an option required on
    the command line is not required any more when the environment gives it. Options given on
    the command line are noted, for `apply_file`."""
    environment = os.environ if environment is None else environment
    for action in _options(parser):
        action.__class__ = _recording(type(action))
        name = variable(action)
        if name in environment:
            action.default = _convert(action, environment[name], name)
            action.required = False


def apply_file(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    path: Path,
    environment: Mapping[str, str] | None = None,
) -> None:
    """Fill in, from the TOML file at `path`, every option left at its default and not set in
    the environment; unknown keys are an error, so a typo is not silently ignored."""
    import tomllib  # only `ndop serve --config` reads TOML

    environment = os.environ if environment is None else environment
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read the settings file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"the settings file {path} is not valid TOML: {exc}") from None
    actions = {a.dest: a for a in _options(parser)}
    for key, raw in data.items():
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None or dest == "config":
            raise UsageError(f"the settings file {path} names an unknown setting {key!r}")
        if variable(action) in environment or dest in getattr(args, EXPLICIT, ()):
            continue
        setattr(args, dest, _convert(action, raw, f"{key} in {path}"))


def missing_required(args: argparse.Namespace, required: tuple[str, ...]) -> None:
    """UsageError naming the first of `required` that no source gave."""
    for dest in required:
        if getattr(args, dest, None) in (None, ""):
            option = "--" + dest.replace("_", "-")
            raise UsageError(f"give {option} (or {PREFIX}{dest.upper()}, or {dest} in --config)")
