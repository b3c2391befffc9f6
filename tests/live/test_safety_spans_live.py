"""An automatic rollback, tripped for real, reaches an OTLP collector as a `turnout.rollback` span;
`turnout canary` without a canary is refused; `turnout resume` after the rollback completes the
rollback drill that `turnout checkpoint` asks for.

The trip: values made to differ in new.sqlite behind the proxy's back, then only read in shadow mode
with reads on new, so every comparison is a discrepancy and discrepancy_rate trips.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from turnout import AsyncClient, RetryPolicy

from proxy.statedir import SAFETY_RECORDS_FILE
from proxy.telemetry import tracing as attr
from tests.live.test_cutover_rollback_span import FAST_EXPORT, rollbacks
from tests.live.test_safety_live import SQLITE_PAIR, flags_file, status, wait_for
from tests.support.otlp_receiver import GrpcReceiver
from tests.support.proxy_process import ProxyProcess, run_cli, run_turnout, write_config

FLAGS = ("use_new_storage: true\nshadow_mode_enabled: true\ntraffic_percentage: {read: 100, write: 100}\n"
         "rollback_triggers: {discrepancy_rate: 0.05, window: 2s, min_calls: 20}\n")


@pytest.mark.slow
async def test_an_automatic_rollback_is_a_span_and_its_resume_is_the_drill(tmp_path: Path,
                                                                          receiver: GrpcReceiver) -> None:
    config = write_config(tmp_path, *SQLITE_PAIR)
    flags_file(tmp_path, FLAGS)
    env = {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_TRACES_SAMPLER": "always_off",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    with ProxyProcess(config, env=env) as proxy:
        # No canary in the flag file: stepping in on one is refused, plainly, and changes nothing.
        refused = run_cli(config, "canary", "hold", "--reason", "no such thing")
        assert refused.returncode == 2, (refused.stdout, refused.stderr)
        assert "the flag file has no canary" in refused.stderr
        assert not (await status(config))["override"]["active"]

        async with AsyncClient(proxy.target, timeout=5, retry=RetryPolicy(attempts=1)) as client:
            keys = [f"profile:{n:03}" for n in range(40)]
            for key in keys:
                await client.set(key, {"key": key})
            with sqlite3.connect(tmp_path / "new.sqlite") as db:
                db.execute("UPDATE kv SET value = ? WHERE key LIKE 'profile:%'", (b'{"corrupted": true}',))
            db.close()
            stop = asyncio.Event()

            async def read() -> None:
                while not stop.is_set():
                    for key in keys:
                        await client.get(key)

            reader = asyncio.create_task(read())

            async def rolled_back() -> dict[str, Any] | None:
                doc = await status(config)
                return doc if doc["override"]["active"] else None

            try:
                tripped = await wait_for(rolled_back, 30, "discrepancy_rate to trip")
            finally:
                stop.set()
                await reader
        trigger = tripped["override"]["trigger"]
        assert tripped["override"]["automatic"] is True
        assert trigger["name"] == "discrepancy_rate"

        spans = rollbacks(receiver.spans.wait_for(lambda s: len(rollbacks(s)) >= 1, timeout=40))
        span = spans[0]
        assert span.attributes[attr.ROLLBACK_AUTOMATIC] is True
        reason = str(span.attributes[attr.ROLLBACK_REASON])
        assert reason.startswith("automatic rollback: discrepancy_rate"), reason
        assert f"threshold {trigger['threshold']:g}" in reason
        assert span.attributes[attr.ROLLBACK_OUTCOME] == "ok"
        assert str(span.attributes[attr.ROLLBACK_DETAIL]).startswith("discrepancy_rate: everything on old")
        incident = Path(str(span.attributes[attr.ROLLBACK_INCIDENT]))
        assert json.loads(incident.read_text())["trigger"]["name"] == "discrepancy_rate"

        # Before the resume the drill is half done: a rollback, no resume yet.
        before = json.loads(run_cli(config, "checkpoint", "--json").stdout)
        drill = {c["name"]: c for c in before["checkpoints"]}["rollback_possible"]
        assert drill["verdict"] == "no-go", drill
        assert drill["measured"]["drill_done"] is False, drill
        assert "no rollback drill: a rollback, but no resume after it" in drill["detail"], drill

        run_turnout(config, "resume")
        events = json.loads((tmp_path / "state" / SAFETY_RECORDS_FILE).read_text())["events"]
        assert [e["kind"] for e in events][-2:] == ["rollback", "resume"], events
        assert events[-2]["automatic"] is True
        after = json.loads(run_cli(config, "checkpoint", "--json").stdout)
        drill = {c["name"]: c for c in after["checkpoints"]}["rollback_possible"]
        assert drill["measured"]["drill_done"] is True, drill
        assert "a rollback and a resume since shadow mode began" in drill["detail"], drill
        assert "no rollback drill" not in drill["detail"], drill
