"""The legacy store's contents in memory, and what the old application changed on disk.

`FileIndex` holds what a jsonfile store serves: every key's value as compact JSON text (so a read
never parses and a rewrite never re-serializes a value), the signature of the file those contents
match (inode, mtime, size), and, with the journal on, the journaled writes the file lacks yet.

The old application may still write the file itself. `watch_for_changes` polls the file's
signature; a changed file is read whole (`FileIndex.read_if_changed`) and either served as it is
(`adopt`) or merged with the journaled writes the file lacks (`merge`, the rule of jsonfile.py):
each such write is kept over the new contents unless the old application changed that same key too
(its value is no longer the one turnout's write replaced) and did so later (the file's mtime is
after the write). A write lost that way is logged with its key and counted (`superseded`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from proxy.backends.base import Key, Value
from proxy.backends.jsonjournal import Entry, journal_path, read_journal
from proxy.backends.legacyfile import Signature, read_store, render_store, signature
from proxy.durable import replace_file
from proxy.errors import BackendUnavailable

# One logger for the store, whichever of its modules speaks: operators filter on it.
log = logging.getLogger("proxy.backends.jsonfile")

#: How often the file is checked for changes made by the old application.
POLL_INTERVAL_S = 0.1

#: One queued write: (key, value) for a set, (key, None) for a delete.
Op = tuple[Key, Value | None]
#: The file's contents and signature, as read from disk.
Contents = tuple[dict[Key, Value], Signature]


@dataclass(frozen=True, slots=True)
class Pending:
    """A journaled write the file does not hold yet."""

    entry: Entry
    acked: float  # time.monotonic() when it was acknowledged


def apply_op(data: dict[Key, Value], key: Key, value: Value | None) -> None:
    """A set (value) or a delete (None) applied to contents in memory."""
    if value is None:
        data.pop(key, None)
    else:
        data[key] = value


class FileIndex:
    """What the store serves, the file signature it matches, and the journaled writes the file lacks."""

    def __init__(self, path: Path, data: dict[Key, Value], sig: Signature) -> None:
        self.path = path
        self.data = data
        self.sig = sig
        self.unflushed: list[Pending] = []
        #: The file's value of each key with an unflushed write, from before that write (None: absent).
        self.bases: dict[Key, Value | None] = {}
        #: Acknowledged writes replaced by a later change of the old application to their key.
        self.superseded = 0
        #: Reloads after the file changed on disk under us.
        self.reloads = 0

    def read_if_changed(self) -> Contents | None:
        """The file's contents and signature if someone else changed it since we last read or wrote it.

        Runs in a worker thread and changes nothing, so a failure half-way leaves the state whole.
        """
        try:
            current = signature(self.path.stat())
        except FileNotFoundError:
            return None  # deleted under us: our next rewrite puts it back whole
        except OSError as exc:
            raise BackendUnavailable(f"jsonfile {self.path}: cannot check for changes: {exc.strerror or exc}") from exc
        if current == self.sig:
            return None
        try:
            return read_store(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackendUnavailable(f"jsonfile {self.path}: cannot read: {exc.strerror or exc}") from exc

    def adopt(self, changed: Contents) -> None:
        """Serve the file's new contents as they are."""
        self.data, self.sig = changed
        self.reloads += 1
        log.info("jsonfile %s changed on disk; serving its new contents (%d keys, %d journaled writes kept over them)",
                 self.path, len(self.data), len(self.unflushed))

    def merge(self, changed: Contents) -> tuple[list[Pending], dict[Key, Value]]:
        """Serve the file's new contents with the unflushed writes that survive them applied on top;
        returns those kept writes and the new file's value of each of their keys (present ones), on
        which the journal must now base them. Under the commit lock, with writes unflushed."""
        data, sig = changed
        kept: list[Pending] = []
        superseded: list[Pending] = []
        for pending in self.unflushed:
            survives = pending.entry.survives(data.get(pending.entry.key), sig[1])
            (kept if survives else superseded).append(pending)
        file_values = {p.entry.key: v for p in kept if (v := data.get(p.entry.key)) is not None}
        for pending in kept:
            apply_op(data, pending.entry.key, pending.entry.value)
        self.adopt((data, sig))
        self.superseded += len(superseded)
        report_superseded(self.path, [p.entry for p in superseded])
        return kept, file_values


def report_superseded(path: Path, superseded: Sequence[Entry]) -> None:
    """Say which acknowledged writes a later change by the old application replaced: never silently."""
    if superseded:
        keys = ", ".join(repr(entry.key) for entry in superseded[:10])
        log.warning("jsonfile %s: the old application changed %d keys after turnout wrote them and before "
                    "turnout's next rewrite; its later values win: %s%s", path, len(superseded), keys,
                    " ..." if len(superseded) > 10 else "")


def replay_journal(path: Path, data: dict[Key, Value], sig: Signature, merge: bool = True) -> tuple[Signature, int]:
    """Apply a journal left beside path (by a crash, or a proxy stopped before its last rewrite) to
    data and rewrite the file with it; returns the file's signature and how many entries applied.

    The journal itself is left as it is: the caller replaces or deletes it once the file is durable,
    and replaying it again meanwhile (a crash right now) gives the same file."""
    contents = read_journal(journal_path(path))
    if contents is None:
        return sig, 0
    if contents.torn_tail:
        log.warning("jsonfile %s: ignoring a torn last journal entry (a crash mid-append; never acknowledged)", path)
    pending, superseded = contents.over(data, sig, merge)
    report_superseded(path, superseded)
    if not pending:
        return sig, 0
    for entry in pending:
        apply_op(data, entry.key, entry.value)
    try:
        sig = signature(replace_file(path, render_store(data)))
    except OSError as exc:
        raise BackendUnavailable(f"jsonfile {path}: cannot write the journal's writes into the file: "
                                 f"{exc.strerror or exc}") from exc
    log.info("jsonfile %s: replayed %d journaled writes into the file", path, len(pending))
    return sig, len(pending)


async def watch_for_changes(file_lock: asyncio.Lock, catch_up: Callable[[], Awaitable[None]]) -> None:
    """Poll for the old application's changes until cancelled; catch_up reads and serves them."""
    refused = ""  # the last warning, so a file left broken is reported once, not ten times a second
    while True:
        await asyncio.sleep(POLL_INTERVAL_S)
        if file_lock.locked():
            continue  # a flush or rewrite is checking for itself
        try:
            async with file_lock:
                await catch_up()
            refused = ""
        except BackendUnavailable as exc:
            # A half-written file from a non-atomic writer: keep serving what we have, retry.
            if str(exc) != refused:
                refused = str(exc)
                log.warning("%s; still serving the last contents read", exc)
