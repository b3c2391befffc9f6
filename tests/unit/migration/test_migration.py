"""The migration tools on real stores, offline: migrate, verify, repair, validate, archive, restore."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import zstandard

from proxy import statedir
from proxy.backends.base import Item
from proxy.backends.jsondir import JsonDirBackend
from proxy.backends.memory import MemoryBackend
from proxy.backends.sqlite import SqliteBackend
from proxy.cli import main
from proxy.migration import archive as archives
from proxy.migration.migrate import migrate
from proxy.migration.stores import Stores
from proxy.migration.validate import validate_jsonfile
from proxy.migration.verify import verify
from proxy.routing.flags import Flags
from proxy.routing.router import Router
from proxy.statedir import CHECKPOINT_FILE
from tests.support.proxy_process import write_config
from tests.support.stores import backend_contents


async def test_migrate_copies_everything_and_reruns_as_a_no_op(stores: Stores, tmp_path: Path) -> None:
    """A migration copies every key; running it again does nothing."""
    result = await migrate(stores, tmp_path, batch_size=64)
    assert (result.total, result.migrated, result.skipped, result.error_count) == (300, 300, 0, 0)
    assert await backend_contents(stores.new) == await backend_contents(stores.old)
    again = await migrate(stores, tmp_path)
    assert again.already_complete
    assert again.migrated == 0
    restarted = await migrate(stores, tmp_path, restart=True)
    assert (restarted.migrated, restarted.skipped) == (0, 300)


class LosingStore(MemoryBackend):
    """A store that acknowledges a bulk write and keeps all of it but one key (a faulty server, an
    eviction): what only reading the target back can find."""

    async def set_many(self, items: Sequence[Item]) -> None:
        await super().set_many([(key, value) for key, value in items if key != "user:042"])


@pytest.mark.parametrize("empty_target", [True, False])
async def test_read_back_finds_a_write_the_target_lost_and_verify_finds_it_without(
        stores: Stores, tmp_path: Path, empty_target: bool) -> None:
    """With read_back, a key the target acknowledged but does not hold is an error of the run (and the
    run is not complete); without, the run counts the acknowledged write, and verify finds the key missing."""
    lossy = LosingStore()
    if not empty_target:
        await lossy.set("user:299", b'{"n": -1}')  # a target holding something: each batch is read first
    target = Stores(stores.old, lossy, Router(Flags()))
    checked = await migrate(target, tmp_path / "checked", batch_size=64, read_back=True)
    assert (checked.migrated, checked.error_count) == (299, 1)
    assert checked.errors == [{"key": "user:042", "error": "read-back differs from what was written"}]
    checkpoint = statedir.read_json(tmp_path / "checked" / CHECKPOINT_FILE)
    assert checkpoint is not None
    assert not checkpoint["complete"]
    trusted = await migrate(target, tmp_path / "trusted", batch_size=64, restart=True)
    assert trusted.error_count == 0
    report = await verify(target)
    assert not report.clean
    assert report.samples["missing"] == ["user:042"]


async def test_interrupted_migration_resumes_after_its_checkpoint(stores: Stores, tmp_path: Path) -> None:
    """With a checkpoint at user:199, a new run copies only the keys after it."""
    statedir.write_json(tmp_path / CHECKPOINT_FILE, {"source": "old", "last_key": "user:199", "complete": False})
    result = await migrate(stores, tmp_path, batch_size=50)
    assert result.resumed_after == "user:199"
    assert (result.total, result.migrated) == (100, 100)
    assert sorted(await backend_contents(stores.new)) == [f"user:{i:03}" for i in range(200, 300)]


async def test_transform_is_applied_and_its_failures_are_reported(stores: Stores, tmp_path: Path) -> None:
    """A transform changes each document; a key it fails on is reported and not written."""

    def transform(key: str, doc: dict[str, int]) -> dict[str, int]:
        if key == "user:007":
            raise ValueError("bad record")
        return {**doc, "migrated": 1}

    result = await migrate(stores, tmp_path, transform=transform)
    assert result.error_count == 1
    assert result.errors == [{"key": "user:007", "error": "transform failed: bad record"}]
    new = await backend_contents(stores.new)
    assert new["user:001"] == {"n": 1, "migrated": 1}
    assert "user:007" not in new


async def test_verify_reports_missing_different_extra_and_repair_fixes_them(stores: Stores, tmp_path: Path) -> None:
    """Verify counts each kind with samples and checksums; repair copies from the source of truth."""
    await migrate(stores, tmp_path)
    await stores.new.delete("user:001")
    await stores.new.set("user:002", b'{"n": 999}')
    await stores.new.set("zzz:extra", b"1")
    await stores.new.set("user:003", b'{ "n" : 3 }')  # formatting only: not a difference
    result = await verify(stores)
    assert (result.missing, result.different, result.extra) == (1, 1, 1)
    assert result.samples == {"missing": ["user:001"], "different": ["user:002"], "extra": ["zzz:extra"]}
    assert not result.clean
    assert result.old_checksum != result.new_checksum
    repaired = await verify(stores, fix=True)
    assert repaired.clean
    assert repaired.repaired == 3
    assert repaired.old_checksum == repaired.new_checksum
    assert "zzz:extra" not in await backend_contents(stores.new)  # old is the truth for every key here


async def test_verify_works_on_an_unordered_store(tmp_path: Path) -> None:
    """A jsondir folder (unordered scans) is verified too."""
    old = await JsonDirBackend.open(tmp_path / "old.d")
    new = await SqliteBackend.open(tmp_path / "new.sqlite")
    try:
        await old.set_many([(f"k{i}", str(i).encode()) for i in range(50)])
        await new.set_many([(f"k{i}", str(i).encode()) for i in range(1, 50)] + [("x", b"1")])
        result = await verify(Stores(old, new, Router(Flags())))
        assert (result.missing, result.different, result.extra) == (1, 0, 1)
    finally:
        await old.close()
        await new.close()


async def test_repair_takes_each_keys_write_primary_as_truth(stores: Stores, tmp_path: Path) -> None:
    """With session keys routed to new, repair copies those from new and the rest from old."""
    await migrate(stores, tmp_path)
    await stores.old.set("session:1", b'"old"')
    await stores.new.set("session:1", b'"new"')
    await stores.new.set("user:001", b'"changed in new"')
    routed = Stores(stores.old, stores.new, Router(Flags(use_new_storage=True, enabled_for_keys=("^session:",))))
    assert (await verify(routed, fix=True)).clean
    assert json.loads(await stores.old.get("session:1") or b"") == "new"
    assert json.loads(await stores.new.get("user:001") or b"") == {"n": 1}


def test_validate_lists_what_the_new_store_cannot_hold(tmp_path: Path) -> None:
    """Duplicates, NaN, Infinity, long keys, lone surrogates and oversized documents are each found."""
    path = tmp_path / "legacy.json"
    long_key = "k" * 1025
    path.write_text('{"a": 1, "a": 2, "nan": NaN, "inf": [Infinity], "' + long_key + '": 1, '
                    '"big": "' + "x" * 2000 + '", "sur\\ud800": 1, "ok": {"x": 1}}')
    result = validate_jsonfile(path, max_value_bytes=1000)
    assert dict(result.by_problem) == {"duplicate_member": 1, "nan_or_infinity": 2, "key_too_long": 1,
                                       "value_too_large": 1, "key_not_unicode": 1}
    assert not result.ok
    path.write_bytes(b'{"a": "\xff"}')
    assert dict(validate_jsonfile(path, 1000).by_problem) == {"invalid_utf8": 1}
    path.write_text('{"fine": [1, 2, {"x": null}]}')
    assert validate_jsonfile(path, 1000).ok
    path.write_text('{"user:1": {"name": "a", "tags": [{"t": 1, "t": 2}]}, "user:2": {"x": 1}}')
    nested = validate_jsonfile(path, 1000)
    assert nested.samples == [{"problem": "duplicate_member", "key": "user:1",
                               "detail": "member 't' appears more than once; a JSON parser keeps only the last"}]


async def test_archive_and_restore_round_trip(stores: Stores, tmp_path: Path) -> None:
    """A snapshot restores into an empty store with the same content checksum."""
    out = tmp_path / "old.tzst"
    summary = await archives.archive(stores.old, out, "old:jsonfile")
    assert summary.records == 300
    target = await SqliteBackend.open(tmp_path / "restored.sqlite")
    try:
        restored = await archives.restore(out, target)
        assert restored.checksum == summary.checksum
        assert await backend_contents(target) == await backend_contents(stores.old)
    finally:
        await target.close()


async def test_an_archive_keeps_documents_as_the_store_holds_them(tmp_path: Path) -> None:
    """Numbers Python would change (extra digits, exponents, 1.0) and nested documents come back
    byte for byte, not parsed and printed again."""
    documents = {"precise": b'{"x": 0.10000000000000000555, "y": 1.0, "z": 1e2}',
                 "pretty": b'{\n  "a": [1,\n 2],\n  "s": "line\\nbreak"\n}', "big": b"123456789012345678901234567890"}
    source = await SqliteBackend.open(tmp_path / "source.sqlite")
    target = await SqliteBackend.open(tmp_path / "target.sqlite")
    try:
        await source.set_many(list(documents.items()))
        summary = await archives.archive(source, tmp_path / "a.tzst", "old:sqlite")
        await archives.restore(tmp_path / "a.tzst", target)
        assert await target.get("precise") == documents["precise"]
        assert await target.get("big") == documents["big"]
        assert json.loads(await target.get("pretty") or b"") == json.loads(documents["pretty"])
        assert archives.check(tmp_path / "a.tzst").checksum == summary.checksum
    finally:
        await source.close()
        await target.close()


def test_restore_refuses_a_damaged_or_missing_archive_on_the_command_line(
        stores: Stores, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`turnout restore` checks first: a flipped byte or a missing file is an error, not a traceback."""
    (tmp_path / "damaged.tzst").write_bytes(zstandard.ZstdCompressor().compress(
        b'{"format": "turnout-archive", "version": 2, "created": 0, "source": "x"}\n["k",1]\n'
        b'{"trailer": true, "records": 1, "checksum": "0", "sha256": "0"}\n'))
    config = write_config(tmp_path / "cli", old={"type": "jsonfile", "path": "legacy.json"},
                          new={"type": "sqlite", "path": "new.sqlite"})
    for name, message in (("damaged.tzst", "SHA-256 mismatch"), ("absent.tzst", "cannot read the archive")):
        assert main(["restore", str(tmp_path / name), "--config", str(config)]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "cli" / "new.sqlite").exists()


async def test_a_damaged_archive_is_refused_before_anything_is_written(stores: Stores, tmp_path: Path) -> None:
    """A flipped byte or a truncated file fails the check, and the target store stays empty."""
    out = tmp_path / "old.tzst"
    await archives.archive(stores.old, out, "old:jsonfile")
    with out.open("rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as reader:
        text = reader.read()
    line = next(line for line in text.splitlines() if line.startswith(b'["user:150"'))
    tampered = text.replace(line, line.replace(b"150}", b"151}"))
    assert tampered != text
    damaged = tmp_path / "damaged.tzst"
    damaged.write_bytes(zstandard.ZstdCompressor().compress(tampered))
    truncated = tmp_path / "truncated.tzst"
    truncated.write_bytes(zstandard.ZstdCompressor().compress(text[: len(text) // 2]))
    target = await SqliteBackend.open(tmp_path / "restored.sqlite")
    try:
        with pytest.raises(archives.ArchiveError, match=r"SHA-256 mismatch"):
            await archives.restore(damaged, target)
        with pytest.raises(archives.ArchiveError, match=r"truncated|damaged"):
            await archives.restore(truncated, target)
        assert await backend_contents(target) == {}
    finally:
        await target.close()
