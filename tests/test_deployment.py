"""``docker-compose.yml`` and the ``Dockerfile`` run every long-running part so that it can be scraped.

The HTTP process serves ``/metrics`` on its HTTP port; a process without the HTTP API (``mscc mapper``,
``mscc notifier``) serves them only when ``MSCC_METRICS_PORT`` is set, and only reachable from another
container when it listens on every interface (``docs/operations.md``, "Metrics"). No database, no
sockets: this reads the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # PyYAML: installed with schemathesis (the test extra)

from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
HTTP_PARTS = {"intake", "run"}  # the parts that serve the HTTP API, /metrics with it


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return services


def hub_parts() -> dict[str, tuple[str, dict[str, Any]]]:
    """Each compose service that runs the hub for good: its name -> (its ``mscc`` part, its definition)."""
    found = {}
    for name, service in compose_services().items():
        command = service.get("command") or []
        if command[:1] == ["mscc"] and "--burst" not in command:
            found[name] = (command[1], service)
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE form
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def container_ports(service: dict[str, Any]) -> set[int]:
    """The container ports a service exposes to the compose network or publishes ("8080:8080", "9464")."""
    entries = [*(service.get("expose") or []), *(service.get("ports") or [])]
    return {int(str(entry).rsplit(":", 1)[-1].split("/")[0]) for entry in entries}


def test_compose_runs_every_long_running_part() -> None:
    # Without this the tests below could pass on a file that runs nothing.
    assert sorted(part for part, _ in hub_parts().values()) == ["intake", "mapper", "notifier"]


def test_every_worker_serves_metrics_on_a_port_it_exposes() -> None:
    for name, (part, service) in hub_parts().items():
        if part in HTTP_PARTS:
            continue
        env = environment(service)
        assert "MSCC_METRICS_PORT" in env, f"{name}: no MSCC_METRICS_PORT, so no metrics"
        port = Settings.model_validate({"metrics_port": env["MSCC_METRICS_PORT"]}).metrics_port  # as it is read
        assert port, f"{name}: MSCC_METRICS_PORT={port} (0 would be a different port at each start)"
        assert port in container_ports(service), f"{name}: metrics port {port} is not exposed"
        assert f"MSCC_METRICS_PORT={port}" in (ROOT / "docs" / "operations.md").read_text(), name


def test_the_http_parts_serve_metrics_on_their_published_http_port() -> None:
    for name, (part, service) in hub_parts().items():
        if part not in HTTP_PARTS:
            continue
        env = environment(service)
        port = int(env.get("MSCC_HTTP_PORT", Settings.model_fields["http_port"].default))
        assert port in container_ports(service), f"{name}: HTTP port {port} (and /metrics) is not exposed"
        assert "MSCC_METRICS_PORT" not in env, f"{name}: MSCC_METRICS_PORT is ignored where /metrics is served"


def test_the_image_listens_for_metrics_on_every_interface() -> None:
    # The default host is 127.0.0.1: inside a container that port would be unreachable by any scraper.
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = dockerfile.replace("\\\n", " ").splitlines()  # continuation lines joined
    assert "MSCC_METRICS_HOST=0.0.0.0" in " ".join(i for i in instructions if i.startswith("ENV ")).split()
    assert Settings.model_fields["metrics_host"].default == "127.0.0.1"  # outside one, only this machine
