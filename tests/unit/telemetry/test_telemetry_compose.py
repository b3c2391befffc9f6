"""docker-compose.yml runs the proxy beside Jaeger all-in-one (wired by the standard OTEL_* variables), PostgreSQL
and Redis."""

from __future__ import annotations

from typing import Any

import yaml

from tests.support.paths import ROOT

COMPOSE = ROOT / "docker-compose.yml"


def services() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return dict(doc["services"])


def test_jaeger_all_in_one_takes_otlp_on_4317_and_shows_the_ui_on_16686() -> None:
    """The Jaeger service is all-in-one and publishes OTLP/gRPC and the UI on their usual ports."""
    jaeger = services()["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one:")
    assert {"4317:4317", "16686:16686"} <= set(jaeger["ports"])


def test_the_proxy_exports_to_jaeger_through_otel_variables_alone() -> None:
    """The proxy is built from this repository and pointed at Jaeger's OTLP port with OTEL_* variables, nothing else."""
    proxy = services()["turnout"]
    assert proxy["build"] == "."
    assert "jaeger" in proxy["depends_on"]
    env = proxy["environment"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
    assert env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc") == "grpc"
    assert all(name.startswith(("OTEL_", "TURNOUT_")) for name in env)


def test_postgres_and_redis_run_beside_the_proxy_which_moves_the_legacy_file_into_postgres() -> None:
    """The proxy waits for a healthy PostgreSQL and serves the example that moves the legacy file there,
    its password passed through the environment, never written in a config."""
    every = services()
    assert every["postgres"]["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(every["postgres"]["healthcheck"]["test"])
    assert every["redis"]["image"].startswith("redis:")
    assert "always" in every["redis"]["command"]
    proxy = every["turnout"]
    assert proxy["depends_on"]["postgres"]["condition"] == "service_healthy"
    example = proxy["command"][-1]
    assert example == proxy["environment"]["TURNOUT_CONFIG"] == "/etc/turnout/examples/jsonfile-to-postgres.yaml"
    assert (ROOT / "config" / "examples" / "jsonfile-to-postgres.yaml").is_file()
    assert "@postgres:5432/" in proxy["environment"]["TURNOUT_PG_DSN"]
    assert "${TURNOUT_PG_PASSWORD" in proxy["environment"]["TURNOUT_PG_DSN"]
