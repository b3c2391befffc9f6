"""Comparison rules and key-space coverage in a real `turnout serve` on two SQLite stores in shadow mode.

Differences are planted in new.sqlite behind the proxy's back: one only in an ignored field, one
within the numeric tolerance (neither is a discrepancy; each is a hit of its rule), one real
difference beside an ignored field, and one that only an expired rule would excuse (recorded; status
shows the rule expired, with its owner). Coverage by prefix comes from the reads and a `turnout verify`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
from pathlib import Path

from grpc import aio
from turnout import AsyncClient, SyncClient

from proxy.routing.flagfile import parse_flags
from tests.support.metric_families import RULES, shape
from tests.support.proxy_process import ProxyProcess, get_page, http_address, run_cli, run_turnout, write_config


def flag_file(yesterday: dt.date) -> str:
    return f"""revision: rules-1
use_new_storage: true
shadow_mode_enabled: true
comparison_rules:
  - keys: '^session:'
    ignore_fields: ['$.updated_at']
    owner: payments-team
    expires: 2999-12-31
    reason: the new store stamps its own write time
  - keys: '^price:'
    numeric_tolerance: 0.01
    owner: pricing
    expires: 2999-12-31
  - keys: '^cart:'
    ignore_fields: ['$.seen']
    owner: carts-team
    expires: {yesterday.isoformat()}
"""


def plant(store: Path, changes: dict[str, object]) -> None:
    """Rewrite documents in a SQLite store directly, as a bug in the new application might."""
    connection = sqlite3.connect(store)
    with connection:
        for key, value in changes.items():
            connection.execute("UPDATE kv SET value = ? WHERE key = ?", (json.dumps(value), key))
    connection.close()


def test_rules_excuse_what_they_cover_count_hits_and_expire(tmp_path: Path) -> None:
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    (tmp_path / "flags.yaml").write_text(flag_file(yesterday))
    assert parse_flags(flag_file(yesterday)).comparison_rules[2].expired(dt.datetime.now(dt.UTC).timestamp())
    config = write_config(tmp_path, old={"type": "sqlite", "path": "old.sqlite"},
                          new={"type": "sqlite", "path": "new.sqlite"})
    written: dict[str, object] = {
        **{f"session:{i}": {"user": i, "updated_at": 100} for i in range(1, 4)},
        "price:1": {"amount": 10.0, "currency": "EUR"},
        "cart:1": {"items": 2, "seen": 1},
        **{f"user:{i}": {"name": f"u{i}"} for i in range(4)},
    }
    with ProxyProcess(config) as proxy, SyncClient(proxy.target) as kv:
        for key, value in written.items():
            kv.set(key, value)  # shadow mode: both stores get it
        plant(tmp_path / "new.sqlite", {
            "session:1": {"user": 1, "updated_at": 222},  # only the ignored field
            "session:2": {"user": 99, "updated_at": 222},  # a real difference beside it
            "price:1": {"amount": 10.004, "currency": "EUR"},  # within the tolerance
            "cart:1": {"items": 2, "seen": 7},  # only an expired rule would excuse it
        })
        for key in ("session:1", "session:2", "session:3", "price:1", "cart:1"):
            assert kv.get(key) == written[key]  # the primary's (old's) answer
        assert kv.has("session:1")

        status = run_turnout(config, "status")
        shadow = status["shadow"]
        assert shadow["discrepancies"] == 2
        rules = shadow["comparison_rules"]
        assert [(r["rule"], r["owner"], r["hits"], r["expired"]) for r in rules] == [
            (0, "payments-team", 1, False), (1, "pricing", 1, False), (2, "carts-team", 0, True)]
        assert rules[2]["expires"] == yesterday.isoformat()
        found = run_turnout(config, "discrepancies")
        keys = {d["key"]: d for d in found["latest"]}
        assert set(keys) == {"session:2", "cart:1"}
        assert "comparison rule 0" in keys["session:2"]["detail"]  # it applied, and a difference remained
        assert keys["cart:1"]["detail"] == ""  # expired: never applied

        metrics = get_page(http_address(tmp_path / "state"), "/metrics")
        assert shape(metrics).items() >= RULES.items()
        assert 'turnout_comparison_rule_hits_total{owner="payments-team",rule="0"} 1.0' in metrics
        assert 'turnout_comparison_rule_hits_total{owner="carts-team",rule="2"} 0.0' in metrics

        # Coverage before any verify: distinct keys compared by prefix, no key counts, so no share.
        before = {row["prefix"]: row for row in status["coverage"]["prefixes"]}
        assert before["session:"]["shadow"]["compared"] == 3
        assert before["session:"]["keys"] is None
        assert before["session:"]["shadow"]["share"] is None
        assert "user:" not in before  # written, never read: not compared

        verify = run_cli(config, "verify", "--json")  # session:1, session:2, price:1 and cart:1 differ
        assert verify.returncode == 1, verify.stdout + verify.stderr
        after = run_turnout(config, "status")
        rows = {row["prefix"]: row for row in after["coverage"]["prefixes"]}
        assert rows["session:"]["keys"] == 3
        assert rows["session:"]["verified"]["agree"] == 1
        assert rows["session:"]["verified"]["differ"] == 2  # verify applies no rule: it reports every byte
        assert rows["session:"]["shadow"]["share"] == 1.0
        assert rows["session:"]["shadow"]["last_unix"] > 0
        assert rows["cart:"]["shadow"]["share"] == 1.0
        assert rows["user:"]["keys"] == 4
        assert rows["user:"]["verified"]["agree"] == 4
        assert rows["user:"]["shadow"] is None
        assert after["coverage"]["verify_unix"] > status["started_unix"]

        text = run_cli(config, "status")
        assert text.returncode == 0, text.stderr
        assert "comparison rule 2 ('^cart:': ignores $.seen): 0 hits; EXPIRED" in text.stdout
        assert "owner carts-team should remove it" in text.stdout
        assert "comparison rule 0 ('^session:': ignores $.updated_at): 1 hits; owner payments-team" in text.stdout
        assert "  session:: 3 keys, verified" in text.stdout
        assert "3 compared in shadow (100.0%)" in text.stdout
        assert "  user:: 4 keys, verified" in text.stdout


def test_under_workers_status_adds_up_every_workers_hits_and_coverage(tmp_path: Path) -> None:
    """16 connections spread over two workers read the same 20 keys, each differing in new only in an
    ignored field: worker 0's status counts every hit of both workers and no discrepancy; coverage
    says 20 keys compared (the lower bound: one worker's), at most 40 (both workers' summed)."""
    (tmp_path / "flags.yaml").write_text(
        "use_new_storage: true\nshadow_mode_enabled: true\ncomparison_rules:\n"
        "  - {keys: '^session:', ignore_fields: [$.updated_at], owner: payments-team, expires: 2999-12-31}\n")
    config = write_config(tmp_path, old={"type": "sqlite", "path": "old.sqlite"},
                          new={"type": "sqlite", "path": "new.sqlite"})
    keys = [f"session:{i}" for i in range(20)]
    with ProxyProcess(config, args=["--workers", "2"]) as proxy:
        with SyncClient(proxy.target) as kv:
            for key in keys:
                kv.set(key, {"user": key, "updated_at": 1})
        plant(tmp_path / "new.sqlite", {key: {"user": key, "updated_at": 2} for key in keys})
        asyncio.run(read_through_many_connections(proxy.target, keys, connections=16))
        status = run_turnout(config, "status")
        assert len(status["workers"]) == 2
        assert status["shadow"]["discrepancies"] == 0
        assert [r["hits"] for r in status["shadow"]["comparison_rules"]] == [16 * len(keys)]
        (row,) = status["coverage"]["prefixes"]
        assert (row["prefix"], row["shadow"]["compared"]) == ("session:", len(keys))
        # 16 connections all on one worker: one time in 32,768; then the upper figure would be 20.
        assert row["shadow"]["compared_at_most"] == 2 * len(keys)
        hits = [line for line in get_page(http_address(tmp_path / "state"), "/metrics").splitlines()
                if line.startswith("turnout_comparison_rule_hits_total{")]
        assert sum(float(line.rsplit(" ", 1)[1]) for line in hits) == 16 * len(keys)
        assert {'worker="0"' in line for line in hits} == {True, False}  # both workers' samples


async def read_through_many_connections(target: str, keys: list[str], connections: int) -> None:
    async def one() -> None:
        # A channel of its own, not the process's shared connection: the kernel spreads connections.
        channel = aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        async with AsyncClient(target, channel=channel) as kv:
            for key in keys:
                await kv.get(key)
        await channel.close()

    await asyncio.gather(*(one() for _ in range(connections)))
