"""Where the agent learns its server, deployment token and user, for silent activation.

Sources, first found wins per key: command-line options, environment (``FLEETKEEP_SERVER``,
``FLEETKEEP_TOKEN``, ``FLEETKEEP_EMAIL``, ``FLEETKEEP_UPN``, ``FLEETKEEP_USERNAME``,
``FLEETKEEP_DOMAIN``, ``FLEETKEEP_USE_OS_ACCOUNT``), a mobile MDM managed-config file
(``FLEETKEEP_MANAGED_CONFIG``: Android Enterprise JSON, flat JSON, iOS AppConfig plist or
Android ``app_restrictions.xml``), then the agent config file (``FLEETKEEP_AGENT_CONFIG``,
else ``agent.toml`` in the state directory, else the system location an installer writes).
"""

from __future__ import annotations

import json
import os
import plistlib
import sys
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from fleetkeep.agent.state import agent_dir

ANDROID_NS = "{http://schemas.android.com/apk/res/android}"
SYSTEM_CONFIG = {
    "win32": Path(os.environ.get("PROGRAMDATA", r"C:\ProgramData")) / "fleetkeep" / "agent.toml",
    "darwin": Path("/Library/Application Support/fleetkeep/agent.toml"),
}
LINUX_CONFIG = Path("/etc/fleetkeep/agent.toml")
# Managed-config (MDM) key → agent config field.
MANAGED_KEYS = {"server_url": "server", "deployment_token": "token", "user_email": "email"}
POLICY_KEYS = ("allow_copy", "allow_print", "allow_open_in")


class ConfigError(Exception):
    """The agent configuration is unreadable or incomplete; ``str()`` says what to fix."""


@dataclass
class AgentConfig:
    server: str | None = None
    token: str | None = None
    auth_key: str | None = field(default=None, repr=False)
    email: str | None = None
    upn: str | None = None
    username: str | None = None
    domain: str | None = None
    use_os_account: bool = False
    policy: dict[str, bool] = field(default_factory=dict)

    def merge(self, other: dict[str, Any]) -> None:
        """Fill fields still unset from ``other`` (lower priority)."""
        for item in fields(self):
            if item.name not in other or other[item.name] in (None, ""):
                continue
            current = getattr(self, item.name)
            if current in (None, False, {}):
                setattr(self, item.name, other[item.name])


def load_config(overrides: dict[str, Any]) -> AgentConfig:
    config = AgentConfig()
    config.merge(overrides)
    config.merge(_from_env())
    managed = os.environ.get("FLEETKEEP_MANAGED_CONFIG")
    if managed:
        config.merge(read_managed_config(Path(managed)))
    path = _config_file()
    if path is not None:
        config.merge(_read_toml(path))
    if config.use_os_account and not (config.username and config.domain):
        config.username = config.username or os.environ.get("USERNAME") or os.environ.get("USER")
        config.domain = config.domain or os.environ.get("USERDOMAIN")
    return config


def read_managed_config(path: Path) -> dict[str, Any]:
    """The values an MDM pushed, in any of the formats ``fleetkeep deploy mobile-config`` makes."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read managed config {path}: {exc.strerror}") from None
    try:
        values = _parse_managed(raw)
    except (ValueError, ElementTree.ParseError, plistlib.InvalidFileException) as exc:
        raise ConfigError(f"managed config {path} is not JSON, a plist or XML: {exc}") from None
    result: dict[str, Any] = {}
    for key, value in values.items():
        if key in MANAGED_KEYS:
            result[MANAGED_KEYS[key]] = str(value)
    result["policy"] = {k: _bool(values[k]) for k in POLICY_KEYS if k in values}
    if str(result.get("email", "")).startswith(("$", "{")):
        raise ConfigError(
            f"user_email is still the MDM variable {result['email']!r}: the MDM did not "
            "substitute it"
        )
    return result


def _parse_managed(raw: bytes) -> dict[str, Any]:
    text = raw.lstrip()
    if text.startswith(b"{"):
        document = json.loads(raw)
        if "managedProperty" in document:
            return {
                p["key"]: p.get("valueString", p.get("valueBool"))
                for p in document["managedProperty"]
            }
        return dict(document)
    if b"<plist" in raw[:400]:
        return dict(plistlib.loads(raw))
    # Written by the device's MDM (local admin), and expat >= 2.4 bounds entity expansion.
    root = ElementTree.fromstring(raw)  # noqa: S314
    return {
        node.get(f"{ANDROID_NS}key", ""): node.get(f"{ANDROID_NS}defaultValue")
        for node in root.iter("restriction")
    }


def _bool(value: Any) -> bool:
    return value is True or str(value).lower() in {"true", "1", "yes"}


def _from_env() -> dict[str, Any]:
    env = os.environ
    return {
        "server": env.get("FLEETKEEP_SERVER"),
        "token": env.get("FLEETKEEP_TOKEN"),
        "auth_key": env.get("FLEETKEEP_AUTH_KEY"),
        "email": env.get("FLEETKEEP_EMAIL"),
        "upn": env.get("FLEETKEEP_UPN"),
        "username": env.get("FLEETKEEP_USERNAME"),
        "domain": env.get("FLEETKEEP_DOMAIN"),
        "use_os_account": _bool(env.get("FLEETKEEP_USE_OS_ACCOUNT", "")),
    }


def _config_file() -> Path | None:
    explicit = os.environ.get("FLEETKEEP_AGENT_CONFIG")
    if explicit:
        return Path(explicit)
    for candidate in (agent_dir() / "agent.toml", SYSTEM_CONFIG.get(sys.platform, LINUX_CONFIG)):
        if candidate.is_file():
            return candidate
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    known = {f.name for f in fields(AgentConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}")
    return data
