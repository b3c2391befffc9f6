"""Operator hooks: the proxy tells the outside world of its state changes, and asks it before a step.

A migration is steered by people and by their tooling, not by the proxy alone. As gh-ost runs a
hook command at each stage of a migration and Flagger calls webhooks around each canary step, the
config's `hooks:` name receivers for the proxy's events (`rollback`, `resume`, `canary_step`,
`cutover_start`, `cutover_end`): a chat channel, a pager, a deploy system keeping its own record.
Each is either an HTTP POST of the event as JSON, or a command (argv, no shell) given the event on
stdin and in $TURNOUT_EVENT.

Notifying must never stand in the way of what it reports: a hook that fails, hangs or cannot be
reached is bounded by its timeout, logged and counted, and `fire` returns all the same, so a hook can
never block or fail a rollback. `confirm` is the other way round: it is a gate (Flagger's
confirm-promotion webhook). Every `confirm` hook must answer 2xx (or exit 0) for a canary step to go
ahead; one that refuses, fails, times out or cannot be reached holds the step, because a gate that
opens when its keeper is away is no gate.

A hook's url may carry a token in its query and a command's arguments one too: logs and reasons name
a hook by its place in the config and its scheme, host and path (or program) only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from proxy.safety.hookspec import EVENTS, Event, HookSpec, format_timeout
from proxy.secrets import mask

log = logging.getLogger(__name__)

#: How much of a refusal's body or stderr a reason quotes.
QUOTE_CHARS = 200
#: How long close() waits for fire_soon's deliveries still under way before cancelling them.
CLOSE_WAIT_S = 5.0
#: Linux refuses an environment string past 128 KiB (MAX_ARG_STRLEN); past this the event is on stdin only.
MAX_ENV_EVENT_BYTES = 100_000
#: How long a killed command is given to be reaped.
REAP_WAIT_S = 2.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one hook made of one event: ok, or why not (safe to log)."""

    ok: bool
    reason: str = ""


class Hooks:
    """The config's hooks, fired by event name; `failures` counts, by event, each hook that did not take one."""

    def __init__(self, specs: Sequence[HookSpec]) -> None:
        self.specs = tuple(specs)
        self.failures: Counter[str] = Counter()
        # fire_soon's tasks: held here so that the loop's weak reference is not the only one.
        self._pending: dict[asyncio.Task[None], Event] = {}

    def listening(self, event: Event) -> tuple[HookSpec, ...]:
        return tuple(spec for spec in self.specs if event in spec.on)

    async def fire(self, event: Event, document: dict[str, Any]) -> None:
        """Send the event to every hook that hears it, all at once, each within its timeout; never raises."""
        if event == "confirm" or event not in EVENTS:
            raise ValueError(f"not an event to fire: {event!r} (confirm hooks are asked with Hooks.confirm)")
        hooks = self.listening(event)
        if not hooks:
            return
        try:
            outcomes = await self._deliver_all(hooks, event, document)
        except asyncio.CancelledError:  # cut off (close() at shutdown): none of them is known to have it
            self.failures[event] += len(hooks)
            raise
        except Exception:  # a document JSON cannot hold, say: the caller's bug, still never the caller's failure
            self.failures[event] += len(hooks)
            log.exception("turnout: the %s event could not be sent to its hooks", event)
            return
        for hook, outcome in zip(hooks, outcomes, strict=True):
            if not outcome.ok:
                self.failures[event] += 1
                log.warning("turnout: hook %s did not take the %s event: %s", hook.describe(), event, outcome.reason)

    def fire_soon(self, event: Event, document: dict[str, Any]) -> None:
        """fire() in a task of its own, for a caller that must not wait (a rollback); close() awaits it."""
        task = asyncio.get_running_loop().create_task(self.fire(event, document), name=f"turnout hooks: {event}")
        self._pending[task] = event
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        event = self._pending.pop(task, "?")
        if not task.cancelled() and task.exception() is not None:  # fire never raises: a programming error
            log.error("turnout: hooks for the %s event failed", event, exc_info=task.exception())

    async def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Wait (at most wait_s) for fire_soon's deliveries; those still running are cancelled and counted."""
        if not self._pending:
            return
        _, late = await asyncio.wait(set(self._pending), timeout=wait_s)
        for task in late:
            log.warning("turnout: hooks for the %s event still running after %gs at shutdown: cancelled",
                        self._pending.get(task, "?"), wait_s)
            task.cancel()  # fire() counts the hooks it was still sending to
        await asyncio.gather(*late, return_exceptions=True)

    async def confirm(self, document: dict[str, Any]) -> tuple[bool, str]:
        """Ask every `confirm` hook: (True, "") when there are none or each answered 2xx or exited 0;
        otherwise (False, why), naming each hook that did not and what it answered."""
        hooks = self.listening("confirm")
        if not hooks:
            return True, ""
        try:
            outcomes = await self._deliver_all(hooks, "confirm", document)
        except Exception as exc:  # a gate that cannot be asked holds
            self.failures["confirm"] += len(hooks)
            log.exception("turnout: the confirm hooks could not be asked")
            return False, f"the confirm hooks could not be asked: {type(exc).__name__}: {exc}"
        refusals = [f"{hook.describe()}: {outcome.reason}"
                    for hook, outcome in zip(hooks, outcomes, strict=True) if not outcome.ok]
        if not refusals:
            return True, ""
        self.failures["confirm"] += len(refusals)
        reason = "; ".join(refusals)
        log.warning("turnout: confirm hooks hold: %s", reason)
        return False, reason

    async def _deliver_all(self, hooks: Sequence[HookSpec], event: Event,
                           document: dict[str, Any]) -> list[Outcome]:
        body = event_body(event, document)
        # One session per firing, not one per Hooks: the command line fires from separate asyncio.run
        # calls, and a session belongs to the loop it was made on. Events are rare; the cost is nothing.
        async with aiohttp.ClientSession() as session:
            return list(await asyncio.gather(*(self._deliver(hook, session, body) for hook in hooks)))

    async def _deliver(self, hook: HookSpec, session: aiohttp.ClientSession, body: bytes) -> Outcome:
        try:
            async with asyncio.timeout(hook.timeout_s):
                if hook.url is not None:
                    return await _post(session, hook.url, body, hook.timeout_s)
                return await _run(hook.command, body, hook.timeout_s)
        except TimeoutError:
            return Outcome(False, f"timed out after {format_timeout(hook.timeout_s)}")
        except aiohttp.ClientError as exc:
            return Outcome(False, _scrub(f"cannot reach it: {exc or type(exc).__name__}", hook))
        except OSError as exc:
            return Outcome(False, _scrub(f"cannot run it: {exc.strerror or exc}", hook))
        except Exception as exc:  # a hook must never fail its caller: whatever it did is its failure
            return Outcome(False, _scrub(f"failed: {type(exc).__name__}: {exc}", hook))


def event_body(event: Event, document: dict[str, Any]) -> bytes:
    """The JSON a hook receives: the event, when, which process sent it, then the event's own fields."""
    doc = {"event": event, "time": time.time(), "proxy": {"pid": os.getpid(), "host": socket.gethostname()},
           **document}
    # default=str: a field of a type JSON has no form for (a Path) must not stop the event.
    return json.dumps(doc, ensure_ascii=False, default=str).encode()


async def _post(session: aiohttp.ClientSession, url: str, body: bytes, timeout_s: float) -> Outcome:
    # No redirects: a POST sent on to another address would carry the event (and be turned into a GET).
    async with session.post(url, data=body, headers={"content-type": "application/json"},
                            timeout=aiohttp.ClientTimeout(total=timeout_s), allow_redirects=False) as reply:
        if 200 <= reply.status < 300:
            return Outcome(True)
        text = await reply.content.read(4 * QUOTE_CHARS)
        return Outcome(False, f"answered {reply.status}{_quote(text)}")


async def _run(command: tuple[str, ...], body: bytes, timeout_s: float) -> Outcome:
    env = dict(os.environ)
    if len(body) <= MAX_ENV_EVENT_BYTES:
        env["TURNOUT_EVENT"] = body.decode()
    # A session of its own: on a timeout the whole process group goes, what the command started too,
    # and a terminal's Ctrl-C reaches the command line only. stdout is dropped: under `--json` it is ours.
    process = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True)
    try:
        _, stderr = await process.communicate(body)
    except BaseException:  # the timeout's cancellation included: the command must not outlive its turn
        _kill(process.pid)
        with contextlib.suppress(TimeoutError, ProcessLookupError):
            async with asyncio.timeout(REAP_WAIT_S):
                await process.wait()
        raise
    code = process.returncode
    if code == 0:
        return Outcome(True)
    if code is not None and code < 0:
        return Outcome(False, f"killed by signal {-code}{_quote(stderr)}")
    return Outcome(False, f"exited {code}{_quote(stderr)}")


def _kill(pid: int) -> None:
    """SIGKILL the process we started and its group (it leads the group: start_new_session)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _quote(raw: bytes) -> str:
    text = " ".join(raw.decode("utf-8", errors="replace").split())
    if not text:
        return ""
    return ": " + (text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "…")


def _scrub(text: str, hook: HookSpec) -> str:
    """text with the hook's url shown as its target and its query masked (a client error may quote the url)."""
    if hook.url is None:
        return mask(text)
    text = text.replace(hook.url, hook.target.removeprefix("POST "))
    return mask(text, *(part for part in (hook.url.partition("?")[2], hook.url.partition("#")[2]) if part))
