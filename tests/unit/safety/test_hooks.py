"""Hooks deliver each event to the hooks that hear it, never fail their caller, and gate on confirm."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from proxy.safety.hooks import Hooks
from proxy.safety.hookspec import NOTIFY_EVENTS, Event, HookSpec
from tests.support.hook_receiver import REFUSAL, HookReceiver, closed_port

#: Bounds a test that would otherwise hang if a hook's timeout did not hold; never reached when it does.
GUARD_S = 30.0
TOKEN = "s3cret-token-value"


@pytest.fixture
async def receiver() -> AsyncIterator[HookReceiver]:
    receiver = await HookReceiver().start()
    yield receiver
    await receiver.close()


def url_hook(url: str, *events: Event, timeout_s: float = 5.0, name: str = "hooks[0]") -> HookSpec:
    return HookSpec(on=frozenset(events), url=url, timeout_s=timeout_s, name=name)


def command_hook(script: str, *args: str, events: tuple[Event, ...] = ("confirm",), timeout_s: float = 5.0,
                 name: str = "hooks[0]") -> HookSpec:
    return HookSpec(on=frozenset(events), command=(sys.executable, "-c", script, *args), timeout_s=timeout_s,
                    name=name)


async def guarded(awaitable: Any) -> Any:
    return await asyncio.wait_for(awaitable, GUARD_S)


# --- fire ------------------------------------------------------------------------------------------

async def test_an_event_arrives_as_json_with_its_fields_and_the_sender(receiver: HookReceiver) -> None:
    """The POST carries content-type application/json, the event name, time, pid, host and the document's fields."""
    hooks = Hooks([url_hook(receiver.url(), "rollback")])
    await hooks.fire("rollback", {"reason": "error rate 12 %", "automatic": True})
    [got] = receiver.received
    assert got.content_type == "application/json"
    assert got.body["event"] == "rollback"
    assert (got.body["reason"], got.body["automatic"]) == ("error rate 12 %", True)
    assert got.body["proxy"]["pid"] == os.getpid()
    assert isinstance(got.body["proxy"]["host"], str)
    assert got.body["proxy"]["host"]
    assert isinstance(got.body["time"], float)
    assert not hooks.failures


async def test_only_the_hooks_whose_on_names_the_event_receive_it(receiver: HookReceiver) -> None:
    """A hook hears only its events; one with every notify event hears all but confirm."""
    hooks = Hooks([url_hook(receiver.url("/rollbacks"), "rollback", name="hooks[0]"),
                   url_hook(receiver.url("/canary"), "canary_step", "resume", name="hooks[1]"),
                   HookSpec(on=NOTIFY_EVENTS, url=receiver.url("/all"), name="hooks[2]")])
    await hooks.fire("canary_step", {"percent": 5})
    await hooks.fire("resume", {})
    await hooks.fire("cutover_end", {"ok": True})
    assert receiver.events("/rollbacks") == []
    assert receiver.events("/canary") == ["canary_step", "resume"]
    assert receiver.events("/all") == ["canary_step", "resume", "cutover_end"]
    assert (await hooks.confirm({})) == (True, "")  # no confirm hook: `all` never makes a gate
    assert len(receiver.received) == 5


async def test_a_command_gets_the_event_on_stdin_and_in_its_environment(tmp_path: Path) -> None:
    """A command hook runs without a shell: the event JSON on stdin and in $TURNOUT_EVENT, its arguments as given."""
    script = ("import os, sys, pathlib; out = pathlib.Path(sys.argv[1]); "
              "out.joinpath('stdin').write_bytes(sys.stdin.buffer.read()); "
              "out.joinpath('env').write_text(os.environ['TURNOUT_EVENT']); "
              "out.joinpath('argv').write_text(repr(sys.argv[2:]))")
    hooks = Hooks([command_hook(script, str(tmp_path), "--team", "pay $ments; rm -rf /", events=("resume",))])
    await hooks.fire("resume", {"paused_for_s": 1.5})
    stdin, env = json.loads((tmp_path / "stdin").read_text()), json.loads((tmp_path / "env").read_text())
    assert stdin == env
    assert (stdin["event"], stdin["paused_for_s"]) == ("resume", 1.5)
    assert (tmp_path / "argv").read_text() == repr(["--team", "pay $ments; rm -rf /"])
    assert not hooks.failures


async def test_a_failing_hook_is_logged_and_counted_and_the_others_still_get_the_event(
        receiver: HookReceiver, caplog: pytest.LogCaptureFixture) -> None:
    """A 500, an unreachable port and a missing program each count a failure; fire returns, the good hook has it."""
    hooks = Hooks([url_hook(receiver.url("/refuse", f"token={TOKEN}"), "rollback", name="hooks[0]"),
                   url_hook(f"http://127.0.0.1:{closed_port()}/x?token={TOKEN}", "rollback", name="hooks[1]"),
                   HookSpec(on=frozenset({"rollback"}), command=("/nonexistent/turnout-hook",), name="hooks[2]"),
                   url_hook(receiver.url(), "rollback", name="hooks[3]")])
    await guarded(hooks.fire("rollback", {"reason": "drill"}))
    assert hooks.failures == {"rollback": 3}
    assert receiver.events() == ["rollback"]
    assert f"hooks[0] (POST http://127.0.0.1:{receiver.port}/refuse)" in caplog.text
    assert "answered 500: " + REFUSAL in caplog.text
    assert "hooks[1] (POST http://127.0.0.1:" in caplog.text
    assert "cannot reach it" in caplog.text
    assert "hooks[2] (command /nonexistent/turnout-hook)" in caplog.text
    assert "cannot run it" in caplog.text
    assert TOKEN not in caplog.text
    assert all(record.levelname == "WARNING" for record in caplog.records)


async def test_a_hook_past_its_timeout_is_abandoned_and_counted(receiver: HookReceiver,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A receiver that never answers: fire returns after the hook's 1 s timeout (the receiver answers only
    when the test closes it), with the failure counted."""
    hooks = Hooks([url_hook(receiver.url("/hang"), "canary_step", timeout_s=1.0)])
    await guarded(hooks.fire("canary_step", {"percent": 25}))
    assert receiver.events("/hang") == ["canary_step"]  # it arrived; the answer never did
    assert hooks.failures == {"canary_step": 1}
    assert "timed out after 1s" in caplog.text


async def test_fire_soon_delivers_in_the_background_and_close_waits_for_it(receiver: HookReceiver) -> None:
    """fire_soon returns at once; close() waits for the delivery."""
    hooks = Hooks([url_hook(receiver.url(), "rollback")])
    hooks.fire_soon("rollback", {"reason": "triggered"})
    await guarded(hooks.close())
    assert receiver.events() == ["rollback"]
    assert not hooks.failures


async def test_close_cancels_a_delivery_still_running_and_counts_it(receiver: HookReceiver,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """At shutdown a hook that has not answered is not waited for past close()'s bound: cancelled, counted."""
    hooks = Hooks([url_hook(receiver.url("/hang"), "resume", timeout_s=30.0)])
    hooks.fire_soon("resume", {})
    await guarded(receiver.arrived.wait())  # the POST is under way
    await guarded(hooks.close(wait_s=0.1))
    assert hooks.failures == {"resume": 1}
    assert "still running after 0.1s at shutdown: cancelled" in caplog.text


async def test_a_document_json_cannot_hold_is_counted_never_raised(receiver: HookReceiver) -> None:
    """fire() logs and counts what it cannot even encode; confirm() holds on it."""
    loop: dict[str, Any] = {}
    loop["self"] = loop  # JSON has no form for a cycle
    hooks = Hooks([url_hook(receiver.url(), "rollback", "confirm")])
    await hooks.fire("rollback", {"doc": loop})
    ok, reason = await hooks.confirm({"doc": loop})
    assert (ok, reason.startswith("the confirm hooks could not be asked: ValueError")) == (False, True)
    assert hooks.failures == {"rollback": 1, "confirm": 1}
    assert receiver.received == []


async def test_fire_refuses_confirm_and_unknown_events() -> None:
    """confirm is asked through confirm(), never fired; an unknown name is a programming error."""
    hooks = Hooks([])
    with pytest.raises(ValueError, match="confirm"):
        await hooks.fire("confirm", {})
    with pytest.raises(ValueError, match="rolback"):
        await hooks.fire("rolback", {})  # type: ignore[arg-type]


# --- confirm ---------------------------------------------------------------------------------------

async def test_confirm_with_no_hooks_goes_ahead() -> None:
    """No confirm hook: nothing to wait for."""
    assert await Hooks([url_hook("http://127.0.0.1:1/x", "rollback")]).confirm({"percent": 5}) == (True, "")


async def test_confirm_goes_ahead_when_every_hook_answers_2xx_or_exits_0(receiver: HookReceiver) -> None:
    """A 204 and an exit 0 both confirm; the hook receives the step's document."""
    hooks = Hooks([url_hook(receiver.url(), "confirm", name="hooks[0]"),
                   command_hook("import sys; sys.stdin.read()", name="hooks[1]")])
    assert await guarded(hooks.confirm({"step": 2, "percent": 25})) == (True, "")
    [got] = receiver.received
    assert (got.body["event"], got.body["percent"]) == ("confirm", 25)


async def test_confirm_holds_on_a_500_naming_the_hook_its_status_and_body(receiver: HookReceiver) -> None:
    """The reason names the hook (its query masked), the status and the start of the body."""
    hooks = Hooks([url_hook(receiver.url(), "confirm", name="hooks[0]"),
                   url_hook(receiver.url("/refuse", f"token={TOKEN}"), "confirm", name="hooks[1]")])
    ok, reason = await guarded(hooks.confirm({"percent": 50}))
    assert not ok
    assert reason == f"hooks[1] (POST http://127.0.0.1:{receiver.port}/refuse): answered 500: {REFUSAL}"
    assert hooks.failures == {"confirm": 1}


async def test_confirm_holds_on_an_exit_3_quoting_stderr() -> None:
    """A command that exits 3: the reason has the exit code and the first 200 characters of stderr."""
    script = "import sys; sys.stdin.read(); sys.stderr.write('change freeze: ' + 'x' * 500); sys.exit(3)"
    ok, reason = await guarded(Hooks([command_hook(script)]).confirm({}))
    assert not ok
    assert reason.startswith(f"hooks[0] (command {sys.executable}): exited 3: change freeze: xxx")
    assert reason.endswith("x…")
    assert len(reason.partition("exited 3: ")[2]) == 201


async def test_confirm_holds_when_a_command_runs_past_its_timeout_and_kills_it(tmp_path: Path) -> None:
    """A command that never exits is killed at its timeout, with what it started; confirm holds."""
    script = ("import subprocess, sys, time, pathlib; "
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
              "pathlib.Path(sys.argv[1]).write_text(f'{child.pid}'); time.sleep(120)")
    pid_file = tmp_path / "child.pid"
    ok, reason = await guarded(Hooks([command_hook(script, str(pid_file), timeout_s=1.0)]).confirm({}))
    assert (ok, reason) == (False, f"hooks[0] (command {sys.executable}): timed out after 1s")
    child = int(pid_file.read_text())
    for _ in range(200):  # the grandchild was killed with its group: wait for it to be gone (or a zombie)
        if not _running(child):
            break
        await asyncio.sleep(0.05)
    assert not _running(child)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_confirm_holds_when_a_receiver_times_out_or_cannot_be_reached(receiver: HookReceiver) -> None:
    """A gate whose keeper does not answer stays shut: timeout and refused connection both hold."""
    hooks = Hooks([url_hook(receiver.url("/hang"), "confirm", timeout_s=1.0, name="hooks[0]"),
                   url_hook(f"http://127.0.0.1:{closed_port()}/gate", "confirm", name="hooks[1]")])
    ok, reason = await guarded(hooks.confirm({}))
    assert not ok
    first, second = reason.split("; ")
    assert first == f"hooks[0] (POST http://127.0.0.1:{receiver.port}/hang): timed out after 1s"
    assert second.startswith("hooks[1] (POST http://127.0.0.1:")
    assert "cannot reach it" in second
    assert hooks.failures == {"confirm": 2}
