"""Keeps the router in force: re-reads the flag file when it changes and swaps the router whole.

A request reads `watcher.router` once, so it sees one consistent flag set; a reload replaces that
one reference and never touches a request in flight.

Noticing a change: every ~250 ms the file is stat'ed, following links, and (device, inode, mtime,
size) compared with the last seen. That catches an in-place rewrite (mtime, size), a rename over it
(inode) and the Kubernetes ConfigMap swap, where `flags.yaml -> ..data/flags.yaml` and the `..data`
link is renamed to point at a new folder (inode again). Polling rather than inotify, because inotify
on the file misses the link swap and on the folder needs care per platform; a stat every 250 ms is
nothing.
A path handed over already resolved into the ConfigMap's timestamped folder (`mount/..2026_11_24/
flags.yaml`, as resolving `mount/flags.yaml` gives) would pin the watcher to a version that never
changes again: `watched_path` turns it back into the link the operator sees (`mount/flags.yaml`).

Reading it: a change is read once the stat has stayed the same for one poll (a writer still
appending is not read half-way). If the bytes hash the same as the flags in force (a touch), nothing
is rebuilt. If they do not parse, they are read again on the next poll before the failure is
declared, in case the writer was slow; a file that is still invalid is refused: the last good flags
stay in force, the failure is logged and counted, and `status()` shows it for `turnout status`.
An invalid file never replaces a good one. The same goes for a file that is not a regular file (a
FIFO, a link to /dev/zero) or is too large (proxy.routing.flagfile refuses both before reading),
and for anything unexpected that goes wrong in a poll: the poller counts it and goes on polling, so
it never dies silently while `status` says all is well.

Operator overrides (`turnout rollback`) are a layer above the file, persisted in state_dir so they
survive a restart. The last good flag file is kept there too, so a proxy that restarts while the
file is broken comes back with the flags it had, not with the defaults.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from proxy import statedir
from proxy.background import BackgroundTask
from proxy.durable import replace_file
from proxy.errors import ConfigError
from proxy.routing.flagbytes import read_flag_file
from proxy.routing.flagfile import digest, load_flags, parse_loaded
from proxy.routing.flags import Flags, LoadedFlags
from proxy.routing.router import Override, Route, Router, Trip
from proxy.statedir import LAST_GOOD_FILE, OVERRIDE_FILE

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.25

Signature = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class ReloadStatus:
    """How reloading the flag file has gone, for `turnout status` and /metrics."""

    path: str
    revision: str  # of the flags in force
    last_attempt: float  # unix time, 0 when never
    last_success: float
    failures: int
    last_error: str  # empty when the last attempt succeeded


def watched_path(path: Path) -> Path:
    """The path to watch for the flag file at path: path itself, unless it lies inside a Kubernetes
    ConfigMap volume's timestamped folder (`M/..<timestamp>/REL`, the current target of the `M/..data`
    link), where the link the operator sees, `M/REL`, is watched instead; that one follows each swap.
    """
    absolute = Path(os.path.abspath(path))
    for version in absolute.parents:
        if not version.name.startswith("..") or version.name == "..":
            continue
        mount = version.parent
        visible = mount / absolute.relative_to(version)
        try:
            if (mount / "..data").is_symlink() and os.path.samefile(mount / "..data", version) \
                    and os.path.samefile(visible, absolute):
                return visible
        except OSError:
            continue
    return path


def _signature(path: Path) -> Signature | None:
    try:
        stat = os.stat(path)  # follows links: a swapped ..data link gives another inode
    except OSError:
        return None  # missing or unreachable: reading it then says which
    return (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)


def _reason(path: Path, exc: Exception) -> str:
    """What a refused read says in `status`: a ConfigError as it is, anything else with its type."""
    if isinstance(exc, ConfigError):
        return str(exc)
    return f"{path}: cannot read flag file: {type(exc).__name__}: {exc}"


def _read_flags(path: Path, in_force: str | None) -> tuple[LoadedFlags | None, bytes]:
    """The file's flags and bytes; None for the flags when the bytes hash to in_force (no change)."""
    raw = read_flag_file(path)
    if in_force is not None and digest(raw) == in_force:
        return None, raw
    return parse_loaded(raw, str(path)), raw


class FlagWatcher:
    def __init__(self, path: Path, state_dir: Path, interval: float = POLL_INTERVAL_S) -> None:
        self.path = watched_path(path)
        if self.path != path:
            log.info("watching %s, the ConfigMap link to %s", self.path, path)
        self.state_dir = state_dir
        self.interval = interval
        self._loaded: LoadedFlags | None = None
        self._override = self._read_override()
        self._canary_step = 0
        self.router = Router(Flags(), self._override)
        self._seen: Signature | None = None
        self._settling: Signature | None = None
        self._retry_due = False
        self._last_attempt = 0.0
        self._last_success = 0.0
        self._failures = 0
        self._last_error = ""
        self._poller = BackgroundTask(self._poll, "flag-watcher")

    # -- start-up and polling ------------------------------------------------------------------

    def load_initial(self) -> None:
        """Read the file once, before serving; when it is broken, fall back to the last good one."""
        self._seen = _signature(self.path)
        attempt = time.time()
        try:
            loaded, raw = _read_flags(self.path, None)
        except Exception as exc:  # whatever it is, start-up goes on as with an invalid file
            self._failed(attempt, _reason(self.path, exc), may_retry=False)
        else:
            assert loaded is not None  # no digest to compare with, so it is always parsed
            self._accept(attempt, loaded)
            self._keep_last_good(raw)
            return
        last_good = self.state_dir / LAST_GOOD_FILE
        if last_good.exists():
            try:
                self._swap(load_flags(last_good))
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
            try:
                await self.check()
            except Exception as exc:  # a poller that died would never reload again: count it, go on
                log.exception("flag watcher: a poll failed")
                self._failed(time.time(), _reason(self.path, exc), may_retry=False)

    async def check(self) -> None:
        """One poll: read the file if it changed and has settled (or a failed read is due a retry)."""
        current = _signature(self.path)
        if current != self._seen:
            if current != self._settling:
                self._settling = current  # changed: read it once it has stayed so for one poll
                self._retry_due = False
                return
            self._seen, self._settling = current, None
        elif not self._retry_due:
            self._settling = None
            return
        may_retry, self._retry_due = not self._retry_due, False
        attempt = time.time()
        in_force = self._loaded.digest if self._loaded is not None else None
        try:
            # Reading may block (a slow volume) and parsing takes a while: off the event loop. The
            # swap itself happens here, on the loop, so it cannot interleave with set_override.
            loaded, raw = await asyncio.to_thread(_read_flags, self.path, in_force)
        except Exception as exc:
            self._failed(attempt, _reason(self.path, exc), may_retry)
            return
        if loaded is None:
            self._succeeded(attempt)  # touched, or changed and changed back: nothing to rebuild
            return
        self._accept(attempt, loaded)
        await asyncio.to_thread(self._keep_last_good, raw)

    def _accept(self, attempt: float, loaded: LoadedFlags) -> None:
        self._swap(loaded)
        log.info("flags loaded: revision %r", loaded.flags.revision)
        self._succeeded(attempt)

    def _succeeded(self, attempt: float) -> None:
        self._last_attempt = self._last_success = attempt
        self._last_error = ""

    def _failed(self, attempt: float, reason: str, may_retry: bool) -> None:
        if may_retry:
            # Perhaps caught between two writes: one more read on the next poll before refusing it.
            self._retry_due = True
            log.debug("flag file did not parse, reading it again on the next poll: %s", reason)
            return
        self._last_attempt = attempt
        self._failures += 1
        self._last_error = reason
        log.error("flag file refused, the last good flags stay in force: %s", reason)

    def _swap(self, loaded: LoadedFlags) -> None:
        self._loaded = loaded
        self._rebuild()

    def _rebuild(self) -> None:
        self.router = Router(self._effective(), self._override)  # the one swap requests see

    @property
    def file_flags(self) -> Flags:
        """The flags as the file says them (before a canary's step takes the percentages)."""
        return self._loaded.flags if self._loaded is not None else Flags()

    def _effective(self) -> Flags:
        """The file's flags, with a canary's current step as both percentages (contract §3)."""
        flags = self.file_flags
        if flags.canary is None:
            return flags
        share = flags.canary.steps[min(self._canary_step, len(flags.canary.steps) - 1)]
        return replace(flags, read_percentage=share, write_percentage=share)

    # -- the canary's step ---------------------------------------------------------------------

    @property
    def canary_step(self) -> int:
        return self._canary_step

    def set_canary_step(self, step: int) -> None:
        """Take the percentages from step `step` of the flag file's canary (proxy.safety.canary keeps
        the step and persists it; the watcher only applies it, to every flag file that comes)."""
        step = max(0, step)
        if step != self._canary_step:
            self._canary_step = step
            self._rebuild()

    def _keep_last_good(self, raw: bytes) -> None:
        try:
            statedir.make_private_dir(self.state_dir)
            replace_file(self.state_dir / LAST_GOOD_FILE, raw, mode=statedir.PRIVATE_FILE)
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
            statedir.remove(path)
        else:
            doc: dict[str, Any] = {"route": override.route.value, "reason": override.reason,
                                   "since": override.since, "automatic": override.automatic}
            if override.trigger is not None:
                doc["trigger"] = asdict(override.trigger)
            statedir.write_json(path, doc)
        self._override = override
        self._rebuild()

    def _read_override(self) -> Override | None:
        doc = statedir.read_json(self.state_dir / OVERRIDE_FILE)
        if doc is None:
            return None
        trigger = doc.get("trigger")
        return Override(route=Route(doc["route"]), reason=str(doc["reason"]), since=float(doc["since"]),
                        automatic=bool(doc.get("automatic", False)),
                        trigger=None if trigger is None else Trip(
                            name=str(trigger["name"]), measured=float(trigger["measured"]),
                            threshold=float(trigger["threshold"]), detail=str(trigger.get("detail", ""))))

    def status(self) -> ReloadStatus:
        return ReloadStatus(
            path=str(self.path),
            revision=self.router.flags.revision,
            last_attempt=self._last_attempt,
            last_success=self._last_success,
            failures=self._failures,
            last_error=self._last_error,
        )
