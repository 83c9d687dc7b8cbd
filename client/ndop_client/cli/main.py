"""`ndop`: the research user's commands live here; operator commands are plugged in by the
server package through the `ndop.commands` entry point, so the client never imports it.

Exit codes: 0 done; 2 bad usage or unreadable input; 3 server unreachable, unauthenticated or
refused; 1 anything else. Errors are one sentence on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ndop_client.cli.check_command import add_check_command
from ndop_client.cli.receipt_command import add_receipt_command
from ndop_core.errors import NdopError, UsageError

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"ndop: {message}", file=sys.stderr)
        raise SystemExit(2)


CLIENT_COMMANDS = ("check", "receipt")


def build_parser(operator_commands: bool = True) -> argparse.ArgumentParser:
    """The whole command line; without `operator_commands` only the client's own commands,
    which is all `ndop check` needs (the server's package takes longer to import than a
    small check takes to run)."""
    parser = _Parser(prog="ndop", description="National data opt-out matching service.")
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_check_command(commands)
    add_receipt_command(commands)
    if not operator_commands:
        return parser
    from importlib.metadata import entry_points

    for plugin in entry_points(group="ndop.commands"):
        try:
            register = plugin.load()
        except ImportError:
            _add_missing_server_commands(commands)
        else:
            register(commands)
    return parser


class _VersionAction(argparse.Action):
    """--version, reading the installed version only when asked (package metadata takes
    longer to load than a small check's whole start-up should)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show ndop's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("ndop")
        except PackageNotFoundError:
            installed = "(version unknown: not installed)"
        print(f"ndop {installed}")
        parser.exit()


OPERATOR_COMMANDS = ("keys", "register", "serve", "org", "audit", "store", "dev-certs", "demo")


def _add_missing_server_commands(commands: Any) -> None:
    """Operator commands answer with how to install them when only the client is installed."""

    def missing(args: argparse.Namespace) -> int:
        raise UsageError(
            f"'ndop {args.command}' is an operator command and the server is not installed: "
            "pip install 'ndop[server]'"
        )

    for name in OPERATOR_COMMANDS:
        # No option prefix: whatever follows is taken as it is, to be refused with advice.
        parser = commands.add_parser(
            name, help="operator command (needs ndop[server])", prefix_chars="\0", add_help=False
        )
        parser.add_argument("rest", nargs="*")
        parser.set_defaults(handler=missing)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(operator_commands=not words or words[0] not in CLIENT_COMMANDS)
    except NdopError as exc:  # a bad NDOP_* setting in the environment
        print(f"ndop: {exc}", file=sys.stderr)
        return exc.exit_code
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except NdopError as exc:
        print(f"ndop: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (`ndop audit --json | head -1`): not an error of ndop's.
        # Point stdout at /dev/null so that Python's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("ndop: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("NDOP_DEBUG"):
            raise
        print(
            f"ndop: unexpected internal error ({type(exc).__name__}); "
            "set NDOP_DEBUG=1 to see where",
            file=sys.stderr,
        )
        return 1


FAST_EXIT_COMMANDS = ("check",)


def run() -> int:
    """The `ndop` program: main(), then, after a check, an exit without the interpreter's
    teardown. By then the check has written and closed its outputs and closed its
    connections and worker processes; what is left is unloading gRPC, NumPy and several
    hundred modules, about 30 ms, a tenth of a small check's time."""
    code = main()
    if sys.argv[1:2] and sys.argv[1] in FAST_EXIT_COMMANDS:
        os._exit(_flushed(code))
    return code


def _flushed(code: int) -> int:
    """`code` once standard output and error are flushed, or 1 if what a successful command
    printed could not be written (a failed one has said why already; a reader that went away
    is not ndop's error, as in main)."""
    for name, stream in (("standard output", sys.stdout), ("standard error", sys.stderr)):
        try:
            stream.flush()
        except BrokenPipeError:
            continue
        except (OSError, ValueError) as exc:
            if code == 0:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                with contextlib.suppress(OSError, ValueError):
                    print(f"ndop: cannot write {name}: {reason}", file=sys.stderr, flush=True)
                code = 1
    return code


if __name__ == "__main__":
    raise SystemExit(run())
