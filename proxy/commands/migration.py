"""`turnout migrate | verify | validate | archive | restore`: the migration tools on the command line.

migrate and verify run inside the proxy when one answers on the admin port (coordinated with live
traffic), else offline: the command opens both stores itself, holding their locks.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import grpc
from turnout.admin.v1 import admin_pb2, admin_pb2_grpc

from proxy.backends import open_backend
from proxy.backends.jsonjournal import journal_path
from proxy.backends.registry import LegacyLayout, store_type
from proxy.commands.common import add_config_argument, add_json_argument, emit, load
from proxy.config import Config
from proxy.control.adminclient import admin_stub, admin_target, follow
from proxy.errors import BackendUnavailable
from proxy.migration import archive as archives
from proxy.migration.migrate import MigrateResult, load_transform, migrate
from proxy.migration.stores import open_offline
from proxy.migration.validate import reads_files, validate
from proxy.migration.verify import verify
from proxy.progress import Progress
from proxy.routing.router import Route


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("migrate", help="copy old into new in batches, resumable, with progress")
    parser.add_argument("--source", choices=["old", "new"], default="old")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=float, help="at most this many keys a second")
    parser.add_argument("--transform", help="module:function(key, document) -> document")
    parser.add_argument("--restart", action="store_true", help="ignore the checkpoint of an earlier run")
    parser.add_argument("--read-back", action="store_true",
                        help="also read every written batch back and compare it (verify checks both stores anyway)")
    _mode_arguments(parser)
    parser.set_defaults(func=run_migrate)

    parser = subparsers.add_parser("verify", help="missing, different and extra keys; exit 0 only when none")
    parser.add_argument("--repair", action="store_true", help="copy each difference from its source of truth")
    parser.add_argument("--truth", choices=["old", "new"],
                        help="with --repair: copy what this store holds for every key (never deletes)")
    _mode_arguments(parser)
    parser.set_defaults(func=run_verify)

    parser = subparsers.add_parser("validate", help="what the new store cannot hold, before migrating")
    parser.add_argument("--store", choices=["old", "new"], default="old")
    add_config_argument(parser)
    add_json_argument(parser)
    parser.set_defaults(func=run_validate)

    parser = subparsers.add_parser("archive", help="a compressed, checksummed snapshot of a store (proxy stopped)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--store", choices=["old", "new"], default="old")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists (never a store's own files)")
    add_config_argument(parser)
    add_json_argument(parser)
    parser.set_defaults(func=run_archive)

    parser = subparsers.add_parser("restore", help="write an archive into a store, after checking it (proxy stopped)")
    parser.add_argument("archive", type=Path)
    parser.add_argument("--store", choices=["old", "new"], default="new")
    add_config_argument(parser)
    add_json_argument(parser)
    parser.set_defaults(func=run_restore)


def _mode_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--offline", action="store_true", help="do not look for a running proxy")
    group.add_argument("--live", action="store_true", help="fail unless a running proxy does the work")
    add_config_argument(parser)
    add_json_argument(parser)


def _live(args: argparse.Namespace, config: Config) -> tuple[admin_pb2_grpc.AdminStub, grpc.Channel] | None:
    if args.offline:
        return None
    found = admin_stub(config)
    if found is None and args.live:
        raise BackendUnavailable(f"no running proxy answered at {admin_target(config)}")
    return found


def run_migrate(args: argparse.Namespace) -> int:
    config = load(args)
    live = _live(args, config)
    if live is not None:
        stub, channel = live
        with channel:
            request = admin_pb2.MigrateRequest(source=args.source, batch_size=args.batch_size,
                                               concurrency=args.concurrency, rate=args.rate or 0,
                                               transform=args.transform or "", restart=args.restart,
                                               read_back=args.read_back)
            doc = follow(stub.Migrate(request), "migrate")
        doc["mode"] = "live"
    else:
        doc = asyncio.run(_migrate_offline(args, config)).to_document()
        doc["mode"] = "offline"
    emit(args, doc, _migrate_summary(doc))
    return 0 if doc["error_count"] == 0 else 1


async def _migrate_offline(args: argparse.Namespace, config: Config) -> MigrateResult:
    transform = load_transform(args.transform) if args.transform else None
    progress = Progress("migrate", None)
    try:
        async with open_offline(config) as stores:
            return await migrate(stores, config.state_dir, Route(args.source), args.batch_size, args.concurrency,
                                 args.rate, transform, args.restart, progress, args.read_back)
    finally:
        progress.close()


def _migrate_summary(doc: dict[str, Any]) -> str:
    if doc["already_complete"]:
        return "migrate: already complete (checkpoint); --restart runs it again"
    lines = [f"migrate ({doc['mode']}): {doc['total']} keys read, {doc['migrated']} migrated, {doc['skipped']} "
             f"skipped, {doc['error_count']} errors in {doc['duration_s']:.1f}s ({doc['rate_per_s']:,.0f} keys/s)"]
    lines += [f"  error {e['key']!r}: {e['error']}" for e in doc["errors"][:20]]
    return "\n".join(lines)


def run_verify(args: argparse.Namespace) -> int:
    config = load(args)
    live = _live(args, config)
    if live is not None:
        stub, channel = live
        with channel:
            doc = follow(stub.Verify(admin_pb2.VerifyRequest(repair=args.repair, truth=args.truth or "")), "verify")
        doc["mode"] = "live"
    else:
        doc = asyncio.run(_verify_offline(args, config))
        doc["mode"] = "offline"
    emit(args, doc, verify_summary(doc))
    return 0 if doc["clean"] else 1


async def _verify_offline(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    progress = Progress("verify", None)
    try:
        async with open_offline(config) as stores:
            truth = Route(args.truth) if args.truth else None
            return (await verify(stores, args.repair, progress, truth, config.state_dir)).to_document()
    finally:
        progress.close()


def verify_summary(doc: dict[str, Any]) -> str:
    verdict = "clean" if doc["clean"] else "DIFFERENCES"
    lines = [f"verify ({doc.get('mode', '')}): {verdict}: {doc['missing']} missing from new, {doc['different']} "
             f"different, {doc['extra']} only in new",
             f"  old: {doc['old_records']} records, checksum {doc['old_checksum']}",
             f"  new: {doc['new_records']} records, checksum {doc['new_checksum']}"]
    if doc.get("repaired"):
        lines.append(f"  repaired {doc['repaired']} keys")
    for kind, keys in (doc.get("samples") or {}).items():
        if keys:
            lines.append(f"  {kind}: {', '.join(repr(k) for k in keys)}")
    return "\n".join(lines)


def run_validate(args: argparse.Namespace) -> int:
    config = load(args)
    spec = config.old if args.store == "old" else config.new
    # Validating old asks what new, the store it is moving to, could not hold (a NUL for PostgreSQL).
    target = config.new.type if args.store == "old" else None

    async def check() -> dict[str, Any]:
        if reads_files(spec):
            return (await validate(spec, None, config.max_value_bytes, target)).to_document()
        backend = await open_backend(spec)
        try:
            return (await validate(spec, backend, config.max_value_bytes, target)).to_document()
        finally:
            await backend.close()

    doc = asyncio.run(check())
    lines = [f"validate {args.store}: {'ok' if doc['ok'] else 'PROBLEMS'} ({doc['checked']} records checked)"]
    lines += [f"  {kind}: {n}" for kind, n in doc["by_problem"].items()]
    lines += [f"  {s['problem']} {s['key']!r} {s['detail']}" for s in doc["samples"]]
    emit(args, doc, "\n".join(lines))
    return 0 if doc["ok"] else 1


def run_archive(args: argparse.Namespace) -> int:
    config = load(args)
    spec = config.old if args.store == "old" else config.new

    async def work() -> archives.ArchiveSummary:
        # Before the store is opened: a refused OUT costs nothing and touches nothing.
        archives.check_out(args.out, protected_paths(config), args.force)
        backend = await open_backend(spec)
        progress = Progress("archive", None)
        try:
            return await archives.archive(backend, args.out, f"{args.store}:{spec.type}", progress,
                                          protected_paths(config), args.force)
        finally:
            progress.close()
            await backend.close()

    summary = asyncio.run(work())
    emit(args, summary.to_document(), f"archived {summary.records} records to {summary.path} "
                                      f"(checksum {summary.checksum}, sha256 {summary.sha256[:16]}...)")
    return 0


def protected_paths(config: Config) -> list[archives.Protected]:
    """What an archive must never overwrite: each file store's files and lock, a jsondir store's
    folder (whatever is inside), and state_dir."""
    protected = [archives.Protected(config.state_dir, "state_dir", tree=True)]
    for name, spec in (("old", config.old), ("new", config.new)):
        if spec.path is None:
            continue
        entry = store_type(spec.type)
        what = f"the {name} store"
        protected.append(archives.Protected(spec.path, what, tree=entry.layout is LegacyLayout.FILE_PER_KEY))
        if (lock := entry.lock_file(spec)) is not None:
            protected.append(archives.Protected(lock, f"{what}'s lock file"))
        if spec.type == "jsonfile":
            # Whether the journal is on now or not: it may hold acknowledged writes the file lacks
            # yet (opening the store replays any journal it finds), and one overwritten loses them.
            protected.append(archives.Protected(journal_path(spec.path), f"{what}'s journal"))
        if spec.type == "sqlite":
            protected += [archives.Protected(spec.path.with_name(spec.path.name + suffix), f"{what}'s {suffix[1:]}")
                          for suffix in ("-wal", "-shm", "-journal")]
    return protected


def run_restore(args: argparse.Namespace) -> int:
    config = load(args)
    spec = config.old if args.store == "old" else config.new

    async def work() -> archives.ArchiveSummary:
        archives.check(args.archive)  # before the store is even opened
        backend = await open_backend(spec)
        progress = Progress("restore", None)
        try:
            return await archives.restore(args.archive, backend, progress)
        finally:
            progress.close()
            await backend.close()

    summary = asyncio.run(work())
    emit(args, summary.to_document(), f"restored {summary.records} records into {args.store} from {summary.path}")
    return 0

