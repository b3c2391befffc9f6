"""Everything a proxy keeps in `state_dir`: one name for each file, and atomic JSON documents.

Whoever reads or writes a file there (the proxy, its workers, the command line, the cutover) takes
its name from here, so a file one side writes is the file the other side reads.

state_dir is the proxy's alone (contract §5): its folders are made 0700 and the files written here
0600, whatever the umask, because they hold keys (the discrepancy log, the replication queue) and, when
asked, values.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from proxy.config import BackendSpec
from proxy.durable import remove_file, replace_file, sibling_lock

#: The durable replication queue (a SQLite file), shared by every worker.
QUEUE_FILE = "replication.sqlite"
#: An operator's (or an automatic) override above the flag file.
OVERRIDE_FILE = "override.json"
#: The last flag file that passed validation, served when the file is broken at start-up.
LAST_GOOD_FILE = "flags.last-good.yaml"
#: The outcome of the last verify, whoever ran it; the cutover's gate reads it.
LAST_VERIFY_FILE = "verify-last.json"
#: Where a migrate stopped, so that it resumes there.
CHECKPOINT_FILE = "migrate-checkpoint.json"
#: One document per rollback or failed cutover.
INCIDENTS_DIR = "incidents"
#: The discrepancy log of one process (rotated beside itself).
DISCREPANCY_LOG_FILE = "discrepancies.jsonl"
#: The byte locks workers take turns on a key through.
KEY_LOCKS_FILE = "keys.lock"
#: The addresses a proxy listens on, written once taken (the config may ask for port 0).
ADMIN_ADDRESS_FILE = "admin.address"
HTTP_ADDRESS_FILE = "http.address"
LISTEN_ADDRESS_FILE = "listen.address"
#: The canary's step and state (proxy.safety.canary): it survives restarts.
CANARY_FILE = "canary.json"
#: What the go/no-go checkpoints need to remember (proxy.safety.records): when shadow mode began, the
#: rollbacks and resumes since.
SAFETY_RECORDS_FILE = "safety.json"
#: Worker N > 0 of `turnout serve --workers` keeps its own files in workers/N.
WORKERS_DIR = "workers"


#: Modes of what the proxy makes in state_dir: its own user's only.
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_private_dir(folder: Path) -> None:
    """Create folder if need be, and make it the proxy's user's alone; parents it has to create
    (workers/ under state_dir, say) are made private too, those already there are left as they are."""
    missing = [folder, *(parent for parent in folder.parents if not parent.exists())]
    for path in reversed(missing):
        path.mkdir(mode=PRIVATE_DIR, exist_ok=True)
        if path.stat().st_mode & 0o777 != PRIVATE_DIR:
            path.chmod(PRIVATE_DIR)  # mkdir's mode is under the umask; a state_dir made earlier keeps its own


def create_private_file(path: Path) -> None:
    """Create an empty file at path, private, unless one is there (an existing file is made private)."""
    make_private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)


def queue_store(state_dir: Path) -> BackendSpec:
    """The store behind the replication queue, opened, locked and prepared as any backend is.

    Its file is created here, private, before SQLite opens it: SQLite would create it under the umask,
    and the -wal and -shm files it makes beside it take the database file's mode."""
    path = state_dir / QUEUE_FILE
    create_private_file(path)
    create_private_file(sibling_lock(path))  # it holds only a pid, but nothing in state_dir is for others
    return BackendSpec(type="sqlite", path=path)


def worker_dir(state_dir: Path, index: int) -> Path:
    """Where worker `index` keeps what is its own (its addresses, its discrepancy log).

    Worker 0 uses state_dir itself, as a lone proxy does, so commands find it where they always did.
    """
    return state_dir if index == 0 else state_dir / WORKERS_DIR / str(index)


def write_json(path: Path, doc: Any) -> None:
    """Replace the document at path atomically, private to the proxy's user."""
    make_private_dir(path.parent)
    replace_file(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(), mode=PRIVATE_FILE)


def read_json(path: Path) -> Any | None:
    """The document at path, or None when there is none."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def remove(path: Path) -> None:
    remove_file(path)


def record_verify(state_dir: Path, doc: dict[str, Any]) -> None:
    """Keep a verify's outcome (without its samples) for the cutover's gate."""
    write_json(state_dir / LAST_VERIFY_FILE, {**doc, "samples": None})


def last_verify(state_dir: Path) -> tuple[dict[str, Any] | None, float | None]:
    """The last verify's outcome and its age in seconds, or (None, None) when none was recorded."""
    path = state_dir / LAST_VERIFY_FILE
    doc = read_json(path)
    if doc is None:
        return None, None
    return doc, time.time() - path.stat().st_mtime


def incident_path(state_dir: Path, stamp: str, action: str) -> Path:
    return state_dir / INCIDENTS_DIR / f"{stamp}-{action}.json"


def read_address(state_dir: Path, name: str) -> str | None:
    """An address a proxy wrote down (ADMIN_ADDRESS_FILE, ...), or None before it did."""
    try:
        return (state_dir / name).read_text().strip()
    except FileNotFoundError:
        return None


def write_address(state_dir: Path, name: str, address: str) -> None:
    """Write down an address taken, atomically (a reader never sees half of one), private."""
    make_private_dir(state_dir)
    replace_file(state_dir / name, (address + "\n").encode(), sync_folder=False, mode=PRIVATE_FILE)
