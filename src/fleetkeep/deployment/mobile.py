"""Mobile MDM managed configuration: the app-config keys and templates for each MDM format.

The keys are a contract with the mobile app and ``fleetkeep-agent`` (which reads the same keys
from a managed-config file); ``docs/deployment.md`` documents them.
"""

from __future__ import annotations

import json
import plistlib
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from fleetkeep.errors import InvalidInput

APP_ID = "dev.fleetkeep.agent"

# The user's email as each MDM spells its substitution variable.
EMAIL_VARIABLES = {
    "generic": "$EMAIL$",
    "mobileiron": "$EMAIL$",
    "intune": "{{mail}}",
    "workspace-one": "{EmailAddress}",
    "jamf": "$EMAIL",
    "meraki": "$EMAIL",
}
FORMATS = ("android", "android-json", "ios")


@dataclass(frozen=True)
class Key:
    name: str
    kind: str  # "string" or "bool"
    title: str
    description: str


KEYS = (
    Key("server_url", "string", "Server address", "Base URL of the fleetkeep server."),
    Key("user_email", "string", "User email", "The user's email; use your MDM's variable."),
    Key("deployment_token", "string", "Mass deployment token", "A live deployment token."),
    Key("allow_copy", "bool", "Allow copy", "Let the user copy restored content to other apps."),
    Key("allow_print", "bool", "Allow print", "Let the user print restored files."),
    Key(
        "allow_open_in", "bool", "Allow open-in", "Let the user open restored files in other apps."
    ),
)


@dataclass(frozen=True)
class MobilePolicy:
    allow_copy: bool = True
    allow_print: bool = True
    allow_open_in: bool = True


def managed_values(
    server_url: str, token: str, mdm: str = "generic", policy: MobilePolicy | None = None
) -> dict[str, Any]:
    if mdm not in EMAIL_VARIABLES:
        raise InvalidInput(f"unknown MDM {mdm!r}; one of {', '.join(EMAIL_VARIABLES)}", field="mdm")
    policy = policy or MobilePolicy()
    return {
        "server_url": server_url.rstrip("/"),
        "user_email": EMAIL_VARIABLES[mdm],
        "deployment_token": token,
        "allow_copy": policy.allow_copy,
        "allow_print": policy.allow_print,
        "allow_open_in": policy.allow_open_in,
    }


def render(values: dict[str, Any], fmt: str) -> str:
    """The managed configuration in one of ``FORMATS``."""
    if fmt == "android":
        return _app_restrictions(values)
    if fmt == "android-json":
        return _android_enterprise(values)
    if fmt == "ios":
        return plistlib.dumps(values, sort_keys=False).decode()
    raise InvalidInput(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}", field="format")


def _app_restrictions(values: dict[str, Any]) -> str:
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<restrictions xmlns:android="http://schemas.android.com/apk/res/android">',
    ]
    for key in KEYS:
        value = values[key.name]
        default = str(value).lower() if key.kind == "bool" else str(value)
        lines.append(
            f"    <restriction android:key={quoteattr(key.name)}"
            f" android:restrictionType={quoteattr(key.kind)}"
            f" android:title={quoteattr(key.title)}"
            f" android:description={quoteattr(key.description)}"
            f" android:defaultValue={quoteattr(default)} />"
        )
    lines.append("</restrictions>")
    return "\n".join(lines) + "\n"


def _android_enterprise(values: dict[str, Any]) -> str:
    properties = []
    for key in KEYS:
        value = values[key.name]
        field = "valueBool" if key.kind == "bool" else "valueString"
        properties.append({"key": key.name, field: value})
    document = {
        "kind": "androidenterprise#managedConfiguration",
        "productId": f"app:{APP_ID}",
        "managedProperty": properties,
    }
    return json.dumps(document, indent=2) + "\n"


def schema_table() -> str:
    """The key table for the documentation, as Markdown."""
    rows = ["| key | type | meaning |", "|---|---|---|"]
    rows += [f"| `{k.name}` | {k.kind} | {escape(k.description)} |" for k in KEYS]
    return "\n".join(rows)
