"""`python -m ndop_client` is the `ndop` command."""

from ndop_client.cli.main import run

raise SystemExit(run())
