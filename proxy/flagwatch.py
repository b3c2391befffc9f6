"""Keeps the router in force: re-reads the flag file when it changes and swaps the router whole.

A request reads `watcher.router` once, so it sees one consistent flag set; a reload replaces that
one reference and never touches a request in flight. The file is polled (stat, following links),
which notices an in-place rewrite, a rename over it, and the Kubernetes ConfigMap swap of the
`..data` link alike. A change is read once the file has stayed the same for one poll, so a
half-written file is not read. A file that does not parse is refused: the last good flags stay in
force and the failure is kept for `turnout status`.

Operator overrides (`turnout rollback`) are a layer above the file, persisted in state_dir so they
survive a restart. The last good flag file is kept there too, so a proxy that restarts while the
file is broken comes back with the flags it had, not with the defaults.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from proxy import statefile
from proxy.background import BackgroundTask
from proxy.durable import replace_file
from proxy.errors import ConfigError
from proxy.flags import Flags, LoadedFlags, load_flags
from proxy.router import Override, Route, Router

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.25
OVERRIDE_FILE = "override.json"
LAST_GOOD_FILE = "flags.last-good.yaml"

Signature = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class ReloadStatus:
    path: str
    revision: str
    last_attempt: float  # unix time, 0 when never
    last_success: float
    failures: int
    last_error: str  # empty when the last attempt succeeded


def _signature(path: Path) -> Signature | None:
    try:
        stat = os.stat(path)  # follows links: a swapped ..data link gives another inode
    except FileNotFoundError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)


class FlagWatcher:
    def __init__(self, path: Path, state_dir: Path, interval: float = POLL_INTERVAL_S) -> None:
        self.path = path
        self.state_dir = state_dir
        self.interval = interval
        self._loaded: LoadedFlags | None = None
        self._override = self._read_override()
        self.router = Router(Flags(), self._override)
        self._seen: Signature | None = None
        self._settling: Signature | None = None
        self._last_attempt = 0.0
        self._last_success = 0.0
        self._failures = 0
        self._last_error = ""
        self._poller = BackgroundTask(self._poll, "flag-watcher")

    # -- start-up and polling ------------------------------------------------------------------

    def load_initial(self) -> None:
        """Read the file once, before serving; when it is broken, fall back to the last good one."""
        self._seen = _signature(self.path)
        if self._reload():
            return
        last_good = self.state_dir / LAST_GOOD_FILE
        if last_good.exists():
            try:
                self._apply(load_flags(last_good), persist=False)
                log.warning("serving the last good flags from %s until %s is fixed", last_good, self.path)
            except ConfigError as exc:
                log.error("the last good flags are unreadable too: %s", exc)

    def start(self) -> None:
        self._poller.start()

    async def stop(self) -> None:
        await self._poller.stop()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            current = _signature(self.path)
            if current == self._seen:
                self._settling = None
                continue
            if current != self._settling:
                self._settling = current  # changed: read it once it has stayed so for one poll
                continue
            self._seen, self._settling = current, None
            await asyncio.to_thread(self._reload)

    def _reload(self) -> bool:
        self._last_attempt = time.time()
        try:
            loaded = load_flags(self.path)
        except ConfigError as exc:
            self._failures += 1
            self._last_error = str(exc)
            log.error("flag file refused, the last good flags stay in force: %s", exc)
            return False
        self._last_error = ""
        if self._loaded is None or loaded.digest != self._loaded.digest:
            self._apply(loaded, persist=True)
            log.info("flags loaded: revision %r", loaded.flags.revision)
        self._last_success = self._last_attempt
        return True

    def _apply(self, loaded: LoadedFlags, persist: bool) -> None:
        self._loaded = loaded
        self.router = Router(loaded.flags, self._override)  # the one swap requests see
        if persist:
            try:
                self.state_dir.mkdir(parents=True, exist_ok=True)
                replace_file(self.state_dir / LAST_GOOD_FILE, self.path.read_bytes())
            except OSError as exc:
                log.warning("cannot keep a copy of the last good flags: %s", exc)

    # -- overrides -----------------------------------------------------------------------------

    @property
    def override(self) -> Override | None:
        return self._override

    def set_override(self, override: Override | None) -> None:
        """Put an override above the file (None clears it); persisted before it takes effect."""
        path = self.state_dir / OVERRIDE_FILE
        if override is None:
            statefile.remove(path)
        else:
            statefile.write_json(path, {"route": override.route.value, "reason": override.reason,
                                        "since": override.since})
        self._override = override
        self.router = Router(self.router.flags, override)

    def _read_override(self) -> Override | None:
        doc = statefile.read_json(self.state_dir / OVERRIDE_FILE)
        if doc is None:
            return None
        return Override(route=Route(doc["route"]), reason=str(doc["reason"]), since=float(doc["since"]))

    def status(self) -> ReloadStatus:
        return ReloadStatus(
            path=str(self.path),
            revision=self.router.flags.revision,
            last_attempt=self._last_attempt,
            last_success=self._last_success,
            failures=self._failures,
            last_error=self._last_error,
        )
