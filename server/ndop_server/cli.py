"""Operator commands, plugged into `ndop` through the `ndop.commands` entry point."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ndop_core import settings
from ndop_core.receipts import key_id
from ndop_server import allocator, store_admin
from ndop_server import keys as keyfile
from ndop_server.cli_access import add_access_commands
from ndop_server.errors import ConfigurationError
from ndop_server.locations import printable_location, store_location
from ndop_server.logs import configure
from ndop_server.register import Published, Publisher
from ndop_server.server import ServerTls, ServingLimits, serve_until, start_server, stop_signals
from ndop_server.store import Store


def register_commands(commands: Any) -> None:
    _keys_commands(commands)
    _register_commands(commands)
    _store_commands(commands)
    serve = _serve_command(commands)
    add_access_commands(commands)
    demo = commands.add_parser("demo", help="the whole loop on synthetic 999-range data")
    demo.add_argument("--dir", type=Path, default=Path("demo-output"), help="where files go")
    demo.add_argument("--mode", choices=("private", "hashed", "both"), default="both")
    demo.set_defaults(handler=_demo)
    settings.environment_defaults(serve)


def _store_commands(commands: Any) -> None:
    store = commands.add_parser("store", help="copy, back up and migrate stores").add_subparsers(
        dest="store_command", required=True
    )
    copying = store.add_parser(
        "copy", help="copy a whole store into a new one (e.g. SQLite to PostgreSQL)"
    )
    copying.add_argument("source", type=store_location, metavar="SRC")
    copying.add_argument("destination", type=store_location, metavar="DEST")
    copying.set_defaults(handler=_store_copy)
    backup = store.add_parser("backup", help="a consistent online copy in a new SQLite file")
    backup.add_argument("destination", type=Path, metavar="DEST")
    backup.add_argument("--store", type=store_location, required=True)
    backup.set_defaults(handler=_store_backup)
    migrate = store.add_parser("migrate", help="bring a store's schema up to this ndop's")
    migrate.add_argument("--store", type=store_location, required=True)
    migrate.set_defaults(handler=_store_migrate)


def _print_copied(copied: store_admin.Copied) -> None:
    print(", ".join(f"{table} {count:,}" for table, count in copied.rows.items()))


def _store_copy(args: argparse.Namespace) -> int:
    copied = store_admin.copy(args.source, args.destination)
    print(f"copied {args.source} -> {printable_location(args.destination)}:")
    _print_copied(copied)
    return 0


def _store_backup(args: argparse.Namespace) -> int:
    copied = store_admin.backup(args.store, args.destination)
    print(f"backed up {printable_location(args.store)} -> {args.destination} (mode 0600):")
    _print_copied(copied)
    print("keep the keys file apart from the backup: together they are the register")
    return 0


def _store_migrate(args: argparse.Namespace) -> int:
    done = store_admin.migrate(args.store)
    if done.before == done.after:
        said = f"the store's schema is current ({done.after})"
    else:
        said = f"migrated the store's schema from {done.before} to {done.after}"
    if done.added_audit_time_index:
        print(f"{said}; added the audit log's time index")
    elif done.before == done.after:
        print(f"{said} and the audit log has its time index; nothing to do")
    else:
        print(said)
    return 0


def _log_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default="info"
    )


def _keys_commands(commands: Any) -> None:
    keys = commands.add_parser("keys", help="register keys").add_subparsers(
        dest="keys_command", required=True
    )
    init = keys.add_parser("init", help="create a keys file (mode 0600)")
    init.add_argument("--keys", type=Path, required=True)
    init.set_defaults(handler=_keys_init)
    public = keys.add_parser("public", help="print the receipt-signing public key")
    public.add_argument("--keys", type=Path, required=True)
    public.add_argument(
        "--all",
        action="store_true",
        help="every signing key the register has used, with its id, so old receipts verify",
    )
    public.set_defaults(handler=_keys_public)
    rotate = keys.add_parser("rotate", help="replace the signing key, or the register's secrets")
    rotate.add_argument("--keys", type=Path, required=True)
    what = rotate.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--signing",
        action="store_true",
        help="a new receipt-signing key; the old public key is kept so old receipts verify",
    )
    what.add_argument(
        "--register",
        action="store_true",
        help="new salt, store key and OPRF key: re-evaluates SNAPSHOT as a new version",
    )
    rotate.add_argument("--store", type=store_location, help="with --register")
    rotate.add_argument(
        "--snapshot", type=Path, help="with --register: the current full list of opt-outs"
    )
    rotate.add_argument("--workers", type=int, help="processes to use (default: every core)")
    _log_options(rotate)
    rotate.set_defaults(handler=_keys_rotate)


def _register_commands(commands: Any) -> None:
    register = commands.add_parser("register", help="load and inspect the register").add_subparsers(
        dest="register_command", required=True
    )
    load = register.add_parser("load", help="publish a new version from a full snapshot")
    load.add_argument("snapshot", type=Path, metavar="SNAPSHOT")
    load.add_argument("--store", type=store_location, required=True)
    load.add_argument("--keys", type=Path, required=True)
    load.add_argument("--workers", type=int, help="processes to use (default: every core)")
    _log_options(load)
    load.set_defaults(handler=_register_load)

    apply = register.add_parser("apply", help="publish a new version from a change set")
    apply.add_argument("--add", type=Path, metavar="FILE", help="opt-outs set")
    apply.add_argument("--remove", type=Path, metavar="FILE", help="opt-outs withdrawn")
    apply.add_argument("--store", type=store_location, required=True)
    apply.add_argument("--keys", type=Path, required=True)
    apply.add_argument("--workers", type=int, help="processes to use (default: every core)")
    _log_options(apply)
    apply.set_defaults(handler=_register_apply)

    info = register.add_parser("info", help="the versions published in a store")
    info.add_argument("--store", type=store_location, required=True)
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_register_info)


def _serve_command(commands: Any) -> argparse.ArgumentParser:
    serve = commands.add_parser(
        "serve",
        help="run the gRPC server",
        description="Every option can also come from NDOP_<OPTION> in the environment or from "
        "a TOML file given with --config (command line, then environment, then file).",
    )
    serve.add_argument("--config", type=Path, metavar="FILE", help="settings in TOML")
    serve.add_argument("--store", type=store_location, help="SQLite path or postgresql:// URL")
    serve.add_argument("--keys", type=Path)
    serve.add_argument("--listen", metavar="HOST:PORT")
    serve.add_argument(
        "--insecure", action="store_true", help="plaintext, on loopback only; local development"
    )
    serve.add_argument(
        "--insecure-any-address",
        action="store_true",
        help="let --insecure listen on an address that is not loopback (plaintext on the network)",
    )
    serve.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM)")
    serve.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    serve.add_argument(
        "--client-ca", type=Path, help="accept client certificates from this CA (mutual TLS)"
    )
    serve.add_argument(
        "--require-client-cert",
        action="store_true",
        help="require a --client-ca certificate on --listen (tokens alone are refused)",
    )
    serve.add_argument(
        "--client-cert-listen",
        metavar="HOST:PORT",
        help="a second port that requires --client-ca certificates; --listen keeps serving tokens",
    )
    serve.add_argument(
        "--poll-seconds", type=float, default=1.0, help="how often to look for a new version"
    )
    defaults = ServingLimits()
    serve.add_argument(
        "--idle-timeout",
        type=float,
        default=defaults.idle_timeout,
        metavar="SECONDS",
        help=f"close a check whose client sends or reads nothing for this long "
        f"(default {defaults.idle_timeout:g})",
    )
    serve.add_argument(
        "--max-checks-per-org",
        type=int,
        default=defaults.checks_per_organisation,
        metavar="N",
        help=f"checks one organisation may have open at once "
        f"(default {defaults.checks_per_organisation})",
    )
    serve.add_argument(
        "--drain-seconds",
        type=float,
        default=defaults.drain_seconds,
        metavar="SECONDS",
        help=f"on SIGTERM, how long checks in flight may finish before they are cut off "
        f"and audited as aborted (default {defaults.drain_seconds:g})",
    )
    serve.add_argument(
        "--max-workers",
        type=int,
        default=defaults.max_workers,
        metavar="N",
        help=f"worker threads (default {defaults.max_workers})",
    )
    serve.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics (/metrics) and the status page (/status) over HTTP "
        "here; loopback only unless --metrics-any-address",
    )
    serve.add_argument(
        "--metrics-any-address",
        action="store_true",
        help="let --metrics-listen use an address that is not loopback (no TLS, no login)",
    )
    _log_options(serve)
    serve.set_defaults(handler=_serve, settings_parser=serve)
    return serve  # type: ignore[no-any-return]


def _keys_init(args: argparse.Namespace) -> int:
    created = keyfile.write_new(args.keys)
    print(f"wrote register keys for {created.register_id} to {args.keys} (mode 0600)")
    print("keep this file secret and backed up: the store cannot be used without it")
    return 0


def _keys_public(args: argparse.Namespace) -> int:
    loaded = keyfile.load(args.keys)
    if not args.all:
        print(loaded.signing_public_key.hex())
        return 0
    print(f"{loaded.signing_public_key.hex()}  id {key_id(loaded.signing_public_key)}  current")
    for retired in reversed(loaded.retired_signing_keys):
        print(f"{retired.hex()}  id {key_id(retired)}  retired")
    return 0


def _keys_rotate(args: argparse.Namespace) -> int:
    configure(args.log_format, args.log_level)
    current = keyfile.load(args.keys)
    if args.signing:
        rotated = current.with_new_signing_key()
        keyfile.save(args.keys, rotated)
        print(
            f"new receipt-signing key {key_id(rotated.signing_public_key)}; the old one "
            f"({key_id(current.signing_public_key)}) is kept for verifying old receipts"
        )
        print("restart the servers with the new keys file; publish 'ndop keys public --all'")
        return 0
    if args.store is None or args.snapshot is None:
        raise ConfigurationError("--register needs --store STORE and --snapshot FILE")
    rotated = current.with_new_register_secrets()
    # The new keys are on disk before any version depends on them; if publishing fails,
    # the old file is put back.
    keyfile.save(args.keys, rotated)
    try:
        with Store(args.store) as store:
            published = Publisher(store, rotated, args.workers).rekey(args.snapshot)
    except BaseException:
        keyfile.restore_previous(args.keys)
        raise
    print(
        f"published version {published.record.version} under new keys "
        f"(OPRF key {rotated.oprf_key_id}): {published.record.count:,} opted out"
    )
    print(
        f"the old keys file is {args.keys}.previous; restart every server with the new one "
        "(until then they keep serving the last version made with their keys); clients "
        "fetch the new filter by themselves"
    )
    return 0


def _print_published(published: Published) -> None:
    record = published.record
    if not published.published:
        print(
            f"nothing changed ({published.unchanged:,} unchanged): no version published, "
            f"register version {record.version} stays current with {record.count:,} opted out"
        )
    else:
        print(
            f"published register version {record.version}: {record.count:,} opted out "
            f"(+{record.added:,} -{record.removed:,}, {published.unchanged:,} unchanged)"
        )
    if published.duplicates:
        print(f"{published.duplicates:,} duplicate rows ignored")
    if published.invalid:
        print(f"{len(published.invalid):,} invalid rows left out:")
        for row in published.invalid[:20]:
            print(f"  line {row.line}: {row.reason}")
        if len(published.invalid) > 20:
            print(f"  ... and {len(published.invalid) - 20:,} more")


def _register_load(args: argparse.Namespace) -> int:
    configure(args.log_format, args.log_level)
    loaded = keyfile.load(args.keys)
    new_file = isinstance(args.store, Path) and not args.store.exists()
    try:
        with Store(args.store, create=True) as store:
            published = Publisher(store, loaded, args.workers).load_snapshot(args.snapshot)
    except BaseException:
        if new_file:  # a first load that failed leaves no store behind, not an empty one
            for leftover in (args.store, *(Path(f"{args.store}{s}") for s in ("-wal", "-shm"))):
                leftover.unlink(missing_ok=True)
        raise
    _print_published(published)
    return 0


def _register_apply(args: argparse.Namespace) -> int:
    configure(args.log_format, args.log_level)
    loaded = keyfile.load(args.keys)
    with Store(args.store) as store:
        published = Publisher(store, loaded, args.workers).apply_changes(args.add, args.remove)
    _print_published(published)
    return 0


def _register_info(args: argparse.Namespace) -> int:
    with Store(args.store) as store:
        history = store.history()
        register_id = store.register_id()
    if args.json:
        print(
            json.dumps(
                {
                    "register_id": register_id,
                    "versions": [
                        {
                            "version": r.version,
                            "published_at": r.published_at,
                            "count": r.count,
                            "source": r.source,
                            "added": r.added,
                            "removed": r.removed,
                        }
                        for r in history
                    ],
                },
                indent=2,
            )
        )
        return 0
    if not history:
        print(f"register {register_id or '(unbound)'}: no version published yet")
        return 0
    print(f"register {register_id}")
    print(
        f"{'version':>8}  {'published at (UTC)':<29} {'count':>12} "
        f"{'added':>10} {'removed':>10}  source"
    )
    for r in history:
        print(
            f"{r.version:>8}  {r.published_at:<29} {r.count:>12,} {r.added:>10,} "
            f"{r.removed:>10,}  {r.source}"
        )
    return 0


def _serve(args: argparse.Namespace) -> int:
    if args.config is not None:
        settings.apply_file(args, args.settings_parser, args.config)
    settings.missing_required(args, ("store", "keys", "listen"))
    configure(args.log_format, args.log_level)
    allocator.limit_growth()
    loaded = keyfile.load(args.keys)
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ConfigurationError("--tls-cert and --tls-key go together")
        tls = ServerTls(
            args.tls_cert,
            args.tls_key,
            args.client_ca,
            require_client_cert=args.require_client_cert,
            client_cert_listen=args.client_cert_listen,
        )
    elif args.client_ca or args.require_client_cert or args.client_cert_listen:
        raise ConfigurationError("client certificates need TLS: give --tls-cert and --tls-key")
    if args.insecure_any_address and not args.insecure:
        raise ConfigurationError("--insecure-any-address only goes with --insecure")
    if args.metrics_any_address and not args.metrics_listen:
        raise ConfigurationError("--metrics-any-address only goes with --metrics-listen")
    stopping = stop_signals()
    running = start_server(
        args.store,
        loaded,
        args.listen,
        tls=tls,
        insecure=args.insecure,
        poll_seconds=args.poll_seconds,
        limits=ServingLimits(
            idle_timeout=args.idle_timeout,
            checks_per_organisation=args.max_checks_per_org,
            drain_seconds=args.drain_seconds,
            max_workers=args.max_workers,
        ),
        allow_insecure_non_loopback=args.insecure_any_address,
        metrics_listen=args.metrics_listen,
        allow_metrics_non_loopback=args.metrics_any_address,
    )
    serve_until(running, stopping)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ndop_server.demo import run_demo

    return run_demo(args.dir, args.mode)
