"""The HTTP side (admin.http) on a real aiohttp server: health for probes, the JSON pages, the dashboard."""

from __future__ import annotations

import json

from proxy.admin.dashboard import DASHBOARD
from proxy.admin.documents import status_document
from proxy.admin.status import proxy_status
from proxy.data.dispatcher import Call
from tests.unit.admin.conftest import Side


async def test_healthz_is_503_until_the_backends_are_open_200_while_serving_and_503_once_stopping(
        side: Side) -> None:
    """/healthz says 503 "starting" before the backends open, 200 "serving" once the proxy serves, and
    503 "stopping" when shutdown begins."""
    before = await side.get("/healthz")
    assert (before.status, json.loads(before.body)["status"]) == (503, "starting")
    assert before.content_type.startswith("application/json")
    side.open()
    serving = await side.get("/healthz")
    assert (serving.status, json.loads(serving.body)) == (200, {"status": "serving"})
    side.state.serving = False
    stopping = await side.get("/healthz")
    assert (stopping.status, json.loads(stopping.body)["status"]) == (503, "stopping")


async def test_status_json_is_the_status_document_of_the_admin_api(side: Side) -> None:
    """/status.json is what `turnout status --json` shows: the flags decoded, counts as numbers."""
    side.open()
    await side.dispatcher.set("k", b"1", Call())
    reply = await side.get("/status.json")
    assert (reply.status, reply.content_type.split(";")[0]) == (200, "application/json")
    served = json.loads(reply.body)
    assert served == status_document(await proxy_status(side.state))
    assert served["flags"]["revision"] == "r1"
    assert [(b["name"], b["type"], b["healthy"]) for b in served["backends"]] == [
        ("old", "memory", True), ("new", "memory", True)]
    assert served["shadow"]["operations"] == {"set": {"old": 1}}


async def test_discrepancies_json_is_empty_before_the_backends_open_then_the_report(side: Side) -> None:
    """/discrepancies.json is {} until the backends are open, then the discrepancy report."""
    assert json.loads((await side.get("/discrepancies.json")).body) == {}
    side.open()
    await side.new.inner.set("only-new", b"1")
    await side.dispatcher.get("only-new", Call())
    report = json.loads((await side.get("/discrepancies.json")).body)
    assert (report["total"], report["by_kind"]) == (1, {"extra_in_shadow": 1})


async def test_the_dashboard_is_served_at_the_root_and_at_dashboard(side: Side) -> None:
    """/ and /dashboard both serve the dashboard page as HTML."""
    for path in ("/", "/dashboard"):
        reply = await side.get(path)
        assert (reply.status, reply.content_type) == (200, "text/html; charset=utf-8")
        assert reply.body == DASHBOARD


async def test_an_unknown_page_is_404_naming_the_pages_there_are(side: Side) -> None:
    """A path the HTTP side does not serve is 404 with a body that lists the pages it does."""
    reply = await side.get("/metrics.json")
    assert reply.status == 404
    for page in ("/metrics", "/healthz", "/status.json", "/discrepancies.json"):
        assert page in reply.body
