"""`turnout checkpoint` and `turnout canary` (proxy.commands.safety): parsing, printing and exit codes.

The proxy's own Checkpoint and Canary handlers are the admin service's; here a real gRPC server on
loopback answers with a report this module's evaluation made, so the command's side of the wire (the
call, the token-less channel, the printing, the exit code) is the real one.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from turnout.admin.v1 import admin_pb2

from proxy.cli import build_parser, main
from proxy.commands.safety import format_canary, format_checkpoints, format_figure, is_go, parse_report
from proxy.errors import TurnoutError
from proxy.safety.checkpoints import evaluate_checkpoints
from tests.unit.safety.test_checkpoints import inputs

SERVICE = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name
GO_REPORT = evaluate_checkpoints(inputs())
NO_GO_REPORT = evaluate_checkpoints(inputs(since_shadow=None))


def canary_state(**fields: Any) -> admin_pb2.CanaryState:
    values: dict[str, Any] = {"active": True, "step": 1, "percentage": 10.0, "state": "holding",
                              "steps": [1.0, 10.0, 50.0, 100.0], "since_unix": 0.0,
                              "reason": "inconclusive: 12 calls of new in the window", "interval_seconds": 600.0}
    values.update(fields)
    return admin_pb2.CanaryState(**values)


@dataclass
class StandIn:
    """Answers Checkpoint with a fixed report and Canary with a fixed state, keeping what it was asked
    (the Admin service's other methods answer UNIMPLEMENTED)."""

    report: dict[str, Any] = field(default_factory=lambda: GO_REPORT)
    canary: admin_pb2.CanaryState = field(default_factory=canary_state)
    asked: list[admin_pb2.CanaryRequest] = field(default_factory=list)

    def checkpoint(self, request: admin_pb2.CheckpointRequest, context: Any) -> admin_pb2.CheckpointReport:
        return admin_pb2.CheckpointReport(go=self.report["go"], report_json=json.dumps(self.report))

    def canary_call(self, request: admin_pb2.CanaryRequest, context: Any) -> admin_pb2.CanaryState:
        self.asked.append(request)
        return self.canary

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Checkpoint": grpc.unary_unary_rpc_method_handler(
                self.checkpoint, request_deserializer=admin_pb2.CheckpointRequest.FromString,
                response_serializer=admin_pb2.CheckpointReport.SerializeToString),
            "Canary": grpc.unary_unary_rpc_method_handler(
                self.canary_call, request_deserializer=admin_pb2.CanaryRequest.FromString,
                response_serializer=admin_pb2.CanaryState.SerializeToString),
        })


@dataclass
class Proxy:
    config: Path
    admin: StandIn


def write_config(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "turnout.yaml"
    (tmp_path / "flags.yaml").write_text("revision: r1\n")
    config.write_text("listen: 127.0.0.1:0\nflags: flags.yaml\nstate_dir: state\n"
                      f"backends: {{old: {{type: memory}}, new: {{type: memory}}}}\nadmin: {{listen: 127.0.0.1:{port}}}\n")
    return config


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    """An admin gRPC server on a free loopback port, and a config that points the command line at it."""
    admin = StandIn()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((admin.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield Proxy(write_config(tmp_path, port), admin)
    finally:
        server.stop(grace=None)


def test_parser_takes_the_canary_action_and_reason() -> None:
    """`canary` alone shows; hold/promote/abort take an optional --reason; anything else is refused."""
    parser = build_parser()
    shown = parser.parse_args(["canary"])
    assert (shown.action, shown.reason, shown.json) == (None, "", False)
    held = parser.parse_args(["canary", "hold", "--reason", "waiting for QA", "--json"])
    assert (held.action, held.reason, held.json) == ("hold", "waiting for QA", True)
    with pytest.raises(SystemExit):
        parser.parse_args(["canary", "skip"])
    assert parser.parse_args(["checkpoint", "--json", "--config", "x.yaml"]).config == "x.yaml"


def test_table_shows_every_checkpoint_with_figures_and_detail() -> None:
    """The table names each checkpoint with its verdict, measured vs threshold, its detail and the overall verdict."""
    text = format_checkpoints(NO_GO_REPORT)
    for c in NO_GO_REPORT["checkpoints"]:
        assert c["name"] in text
        assert c["detail"] in text
    assert "NO-GO" in text.splitlines()[1]  # feature_parity, first row
    assert "compared=0" not in text  # shadow never began: nothing measured, shown as none
    assert text.splitlines()[-1] == "overall: NO-GO"
    assert format_checkpoints(GO_REPORT).splitlines()[-1] == "overall: GO"


def test_figures_print_short() -> None:
    """Numbers short, booleans as yes/no, None as none, dicts as key=value without nested parts."""
    assert format_figure(0.0876543210) == "0.0876543"
    assert format_figure(None) == "none"
    assert format_figure({"compared": 40, "rate": 0.0, "ops": {"get": {}}, "clean": True}) == \
        "{compared=40, rate=0, clean=yes}"
    assert format_figure({"get": {"compared": 40, "discrepancies": 0}, "set": {"compared": 2, "discrepancies": 1}}) == \
        "{get={compared=40, discrepancies=0}, set={compared=2, discrepancies=1}}"


def test_report_that_disagrees_with_itself_is_no_go() -> None:
    """go in the message but a checkpoint not go in the document (or the reverse) exits as no-go."""
    doc = json.loads(json.dumps(GO_REPORT))
    doc["checkpoints"][0]["verdict"] = "inconclusive"
    assert not is_go(admin_pb2.CheckpointReport(go=True, report_json=json.dumps(doc)), doc)
    assert not is_go(admin_pb2.CheckpointReport(go=False, report_json=json.dumps(GO_REPORT)), GO_REPORT)
    assert is_go(admin_pb2.CheckpointReport(go=True, report_json=json.dumps(GO_REPORT)), GO_REPORT)


def test_a_report_that_is_no_document_is_refused() -> None:
    """A report_json that is not JSON, or has no checkpoints, is an error, not a verdict."""
    with pytest.raises(TurnoutError, match="no JSON"):
        parse_report(admin_pb2.CheckpointReport(go=True, report_json="{"))
    with pytest.raises(TurnoutError, match="no list of checkpoints"):
        parse_report(admin_pb2.CheckpointReport(go=True, report_json='{"go": true}'))


def test_canary_text_shows_step_percentage_state_reason_and_steps() -> None:
    """The canary's state in words: its step of all, percentage, state, the reason and the steps."""
    text = format_canary(canary_state(operator_hold=True, reason="waiting for QA"), "hold")
    assert "hold: done. canary holding: step 2 of 4 at 10 %" in text
    assert "steps: [1, 10, 50, 100] %, each held 600s" in text
    assert "held by an operator" in text
    assert "reason: waiting for QA" in text
    assert "no canary" in format_canary(admin_pb2.CanaryState(active=False))


def test_checkpoint_json_prints_the_report_and_exits_by_its_verdict(
        proxy: Proxy, capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints the proxy's report; exit 0 when every checkpoint is go, 1 otherwise."""
    assert main(["checkpoint", "--config", str(proxy.config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(GO_REPORT))
    proxy.admin.report = NO_GO_REPORT
    assert main(["checkpoint", "--config", str(proxy.config), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["go"] is False
    assert main(["checkpoint", "--config", str(proxy.config)]) == 1
    assert "overall: NO-GO" in capsys.readouterr().out


def test_commands_exit_2_when_no_proxy_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With nothing listening at the admin address, both commands say so and exit 2."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(tmp_path, port)
    assert main(["checkpoint", "--config", str(config)]) == 2
    assert "no running proxy answered" in capsys.readouterr().err
    assert main(["canary", "--config", str(config), "--json"]) == 2
    assert "no running proxy answered" in capsys.readouterr().err


def test_canary_sends_the_action_and_prints_the_state(proxy: Proxy, capsys: pytest.CaptureFixture[str]) -> None:
    """`canary promote --reason` sends both; --json prints the CanaryState with every field."""
    assert main(["canary", "promote", "--reason", "QA signed off", "--config", str(proxy.config), "--json"]) == 0
    assert (proxy.admin.asked[-1].action, proxy.admin.asked[-1].reason) == ("promote", "QA signed off")
    doc = json.loads(capsys.readouterr().out)
    assert (doc["step"], doc["percentage"], doc["state"], doc["steps"]) == (1, 10.0, "holding", [1.0, 10.0, 50.0, 100.0])
    assert main(["canary", "--config", str(proxy.config)]) == 0
    assert proxy.admin.asked[-1].action == ""
    assert "canary holding: step 2 of 4" in capsys.readouterr().out


def test_canary_action_without_a_canary_exits_1(proxy: Proxy, capsys: pytest.CaptureFixture[str]) -> None:
    """Holding a canary the flag file does not have did nothing: exit 1; showing that there is none: exit 0."""
    proxy.admin.canary = admin_pb2.CanaryState(active=False)
    assert main(["canary", "hold", "--config", str(proxy.config)]) == 1
    assert "nothing to hold" in capsys.readouterr().out
    assert main(["canary", "--config", str(proxy.config)]) == 0
