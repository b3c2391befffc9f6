"""A rollback is recorded as a span of its own, `turnout.rollback`, with its reason and outcome: from the
proxy for `turnout rollback` and a cutover's automatic rollback, from the command itself offline."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from proxy.telemetry import tracing as attr
from proxy.telemetry.tracing import Telemetry
from tests.support.otlp_receiver import GrpcReceiver, ReceivedSpan
from tests.support.proxy_process import ProxyProcess, run_cli, run_turnout, write_config

FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_EXPORTER_OTLP_INSECURE": "true"}


def rollbacks(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == "turnout.rollback"]


def test_rollbacks_reach_the_collector_as_spans_of_their_own(tmp_path: Path, receiver: GrpcReceiver) -> None:
    (tmp_path / "legacy.json").write_text(json.dumps({f"k{i}": i for i in range(50)}))
    config = write_config(tmp_path, old={"type": "jsonfile", "path": "legacy.json"},
                          new={"type": "sqlite", "path": "new.sqlite"})
    (tmp_path / "flags.yaml").write_text("use_new_storage: true\n")
    env = {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_TRACES_SAMPLER": "always_off",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    with ProxyProcess(config, env=env) as proxy:
        plain = {"PYTHONPATH": env["PYTHONPATH"], "OTEL_SDK_DISABLED": "true"}  # spans only from the proxy
        run_turnout(config, "migrate", env=plain)
        assert run_turnout(config, "verify", env=plain)["clean"]
        report = run_turnout(config, "rollback", "--reason", "span drill", env=plain)
        assert report["ok"], report
        spans = rollbacks(receiver.spans.wait_for(lambda s: len(rollbacks(s)) >= 1))
        span = spans[0]
        assert span.attributes[attr.ROLLBACK_REASON] == "span drill"
        assert span.attributes[attr.ROLLBACK_OUTCOME] == "ok"
        assert span.attributes[attr.ROLLBACK_AUTOMATIC] is False
        incident = Path(str(span.attributes[attr.ROLLBACK_INCIDENT]))
        assert incident.parent == tmp_path / "state" / "incidents"
        assert json.loads(incident.read_text())["reason"] == "span drill"
        status = run_turnout(config, "status", env=plain)
        assert (status["last_rollback"]["reason"], status["last_rollback"]["ok"]) == ("span drill", True)
        assert status["last_rollback"]["time_unix"] > 0
        text = run_cli(config, "status", env=plain, timeout=60)
        text.check_returncode()
        assert "last rollback (operator" in text.stdout
        assert "span drill: ok" in text.stdout

        # A cutover that fails its verify rolls back by itself: that too is a rollback span.
        run_turnout(config, "cutover", "--monitor", "0", env=plain)
        run_turnout(config, "rollback", "--reason", "back again", env=plain)
        connection = sqlite3.connect(tmp_path / "new.sqlite")  # a write that bypassed the proxy
        with connection:
            connection.execute("INSERT INTO kv (key, value) VALUES ('stray', '1')")
        connection.close()
        failed = run_turnout(config, "cutover", "--monitor", "0", expect=1, env=plain)
        assert failed["rolled_back"]
        spans = rollbacks(receiver.spans.wait_for(lambda s: len(rollbacks(s)) >= 3))
        automatic = spans[2]
        assert automatic.attributes[attr.ROLLBACK_AUTOMATIC] is True
        assert str(automatic.attributes[attr.ROLLBACK_REASON]).startswith("cutover failed: verify")
        assert automatic.attributes[attr.ROLLBACK_OUTCOME] == "ok"  # undone cleanly
        assert "writes resumed" in str(automatic.attributes[attr.ROLLBACK_DETAIL])
    assert "operator rollback ok: span drill" in "".join(proxy.output)

    # No proxy running: the command sends the span itself.
    offline = run_turnout(config, "rollback", "--reason", "offline drill", env=env)
    assert offline["ok"], offline
    spans = rollbacks(receiver.spans.wait_for(lambda s: len(rollbacks(s)) >= 4))
    assert (spans[3].attributes[attr.ROLLBACK_REASON], spans[3].attributes[attr.ROLLBACK_OUTCOME]) == (
        "offline drill", "ok")


def test_a_failed_rollback_span_says_failed_and_is_an_error() -> None:
    exporter = InMemorySpanExporter()
    telemetry = Telemetry(enabled=True, exporter=exporter)
    telemetry.rollback("drill", ok=False, automatic=False, detail="verify old: 3 only in new")
    telemetry.shutdown()
    (span,) = exporter.get_finished_spans()
    assert span.name == "turnout.rollback"
    assert dict(span.attributes or {}) == {
        attr.ROLLBACK_REASON: "drill", attr.ROLLBACK_OUTCOME: "failed", attr.ROLLBACK_AUTOMATIC: False,
        attr.ROLLBACK_DETAIL: "verify old: 3 only in new", attr.ROLLBACK_INCIDENT: ""}
    assert span.status.status_code == StatusCode.ERROR
