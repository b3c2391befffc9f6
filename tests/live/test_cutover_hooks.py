"""`turnout cutover` against a running proxy fires the config's cutover_start and cutover_end hooks;
a dry run fires none, and a hook that cannot be reached fails nothing."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from proxy.safety.hooks import QUOTE_CHARS
from tests.support.hook_receiver import HookReceiver, closed_port
from tests.support.proxy_process import ProxyProcess, run_cli, write_config
from tests.support.writers import turnout

TOKEN = "tok-4f1d9"


async def test_a_cutover_fires_cutover_start_and_cutover_end_to_its_hooks(tmp_path: Path) -> None:
    """The receiver gets cutover_start (dry_run false) then cutover_end with the report's steps; a hook
    for other events gets nothing; an unreachable hook is logged with its token masked, the cutover holds."""
    receiver = await HookReceiver().start()
    try:
        (tmp_path / "legacy.json").write_text(json.dumps({f"k{i}": i for i in range(50)}))
        config = write_config(
            tmp_path, old={"type": "jsonfile", "path": "legacy.json"}, new={"type": "sqlite", "path": "new.sqlite"},
            hooks=[{"on": ["cutover_start", "cutover_end"], "url": receiver.url(query=f"token={TOKEN}"),
                    "timeout": "5s"},
                   {"on": ["rollback", "confirm"], "url": receiver.url("/others")},
                   {"on": ["cutover_end"], "url": f"http://127.0.0.1:{closed_port()}/gone?token={TOKEN}",
                    "timeout": "1s"}])
        (tmp_path / "flags.yaml").write_text("use_new_storage: true\n")
        with ProxyProcess(config):
            await turnout(config, "migrate")
            assert (await turnout(config, "verify"))["clean"]
            assert (await turnout(config, "cutover", "--dry-run"))["ok"]
            assert receiver.received == []  # a dry run changes nothing and tells nobody
            done = await _cli(config, "cutover", "--monitor", "1", "--json")
            report = json.loads(done.stdout)
            assert report["ok"], report
        assert receiver.events() == ["cutover_start", "cutover_end"]
        start, end = (r.body for r in receiver.received)
        assert start["dry_run"] is False
        assert (end["ok"], end["rolled_back"]) == (True, False)
        assert [s["name"] for s in end["steps"]] == [s["name"] for s in report["steps"]]
        assert "switch to new" in [s["name"] for s in end["steps"]]
        assert all(r.query == f"token={TOKEN}" for r in receiver.received)
        assert receiver.events("/others") == []
        assert "did not take the cutover_end event" in done.stderr
        assert "POST http://127.0.0.1:" in done.stderr
        assert "/gone" in done.stderr
        assert TOKEN not in done.stderr
        assert TOKEN not in done.stdout
        assert len(done.stderr) < 10 * QUOTE_CHARS  # a warning line, not a traceback
    finally:
        await receiver.close()


async def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`turnout ARGS` to a zero exit, on a thread: the receiver runs on this test's event loop meanwhile."""
    done = await asyncio.to_thread(run_cli, config, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done
