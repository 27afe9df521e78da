"""The device API over HTTP (httpx): activation, heartbeat, restore plan."""

from __future__ import annotations

from typing import Any, NoReturn

import httpx

from fleetkeep import __version__

TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class ServerRefused(Exception):
    """The server said no; ``code`` is its stable problem code, ``detail`` the human reason."""

    def __init__(self, status: int, code: str, detail: str, body: dict[str, Any]) -> None:
        super().__init__(f"{detail} [{code}]")
        self.status = status
        self.code = code
        self.detail = detail
        self.body = body


class DeviceUnauthorized(ServerRefused):
    """The device token no longer works (user preserved/deleted, device disabled …): final."""

    @property
    def reason(self) -> str:
        return str(self.body.get("reason", "unknown"))


class DeviceClient:
    def __init__(self, server: str, device_token: str | None = None) -> None:
        headers = {"User-Agent": f"fleetkeep-agent/{__version__}"}
        if device_token:
            headers["Authorization"] = f"Bearer {device_token}"
        self.http = httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=TIMEOUT)

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.http.close()

    def activate(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", "/device/v1/activations", json=request)

    def heartbeat(self) -> dict[str, Any]:
        return self.call("POST", "/device/v1/heartbeat", json={"agent_version": __version__})

    def restore_plan(self) -> dict[str, Any]:
        return self.call("GET", "/device/v1/restore-plan")

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.http.request(method, path, **kwargs)
        if response.is_success:
            body: dict[str, Any] = response.json()
            return body
        self.raise_refusal(response)

    @staticmethod
    def raise_refusal(response: httpx.Response) -> NoReturn:
        """Turn an error answer (problem JSON, or anything else) into ``ServerRefused``."""
        try:
            problem = response.json()
        except ValueError:
            problem = {}
        if not isinstance(problem, dict):
            problem = {}
        code = str(problem.get("code", f"http_{response.status_code}"))
        detail = str(problem.get("detail", response.reason_phrase))
        if code == "device_unauthorized":
            raise DeviceUnauthorized(response.status_code, code, detail, problem)
        raise ServerRefused(response.status_code, code, detail, problem)
