"""Activation from the agent's side: build the request, call the server, keep the token."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetkeep.agent import state
from fleetkeep.agent.client import DeviceClient
from fleetkeep.agent.config import AgentConfig, ConfigError
from fleetkeep.agent.facts import device_facts

MOBILE = ("android", "ios")


def activation_request(config: AgentConfig, password: str | None = None) -> dict[str, Any]:
    if not config.server:
        raise ConfigError(
            "no server: pass --server, set FLEETKEEP_SERVER or 'server' in agent.toml"
        )
    if not (config.token or config.auth_key):
        raise ConfigError(
            "no deployment token: pass --token, set FLEETKEEP_TOKEN or 'token' in agent.toml"
        )
    request: dict[str, Any] = {
        **device_facts(),
        "token": config.token,
        "auth_key": config.auth_key,
        "email": config.email,
        "upn": config.upn,
        "username": config.username,
        "domain": config.domain,
        "password": password,
    }
    return {k: v for k, v in request.items() if v is not None}


def activate(
    config: AgentConfig, password: str | None = None, directory: Path | None = None
) -> state.Enrollment:
    """Activate and store the device token (mode 0600). Raises ``ServerRefused`` on refusal."""
    request = activation_request(config, password)
    assert config.server is not None
    with DeviceClient(config.server) as client:
        answer = client.activate(request)
    enrollment = state.Enrollment(
        server=config.server.rstrip("/"),
        device_id=int(answer["device_id"]),
        device_token=str(answer["device_token"]),
        mode=str(answer["mode"]),
        activated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        config={
            **answer["config"],
            "platform": request["platform"],
            "policy_mobile": config.policy,
        },
    )
    state.save(enrollment, directory)
    return enrollment


def forget(enrollment: state.Enrollment, directory: Path | None = None) -> None:
    """After 'unauthorized': drop the token; a mobile app wipes all its local state."""
    mobile = enrollment.config.get("platform") in MOBILE
    state.wipe(directory, everything=mobile)
