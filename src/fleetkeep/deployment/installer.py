"""Silent-install command lines for desktop software distribution (SCCM, Intune, Jamf, LANDesk).

Every installer ends up writing the same agent config file (``agent.toml``: ``server``,
``token``, and optionally ``email``/``upn``/``use_os_account``) or setting the same environment
(``FLEETKEEP_SERVER``, ``FLEETKEEP_TOKEN`` …); the agent activates from it on first start.
"""

from __future__ import annotations

import shlex

from fleetkeep.errors import InvalidInput

PLATFORMS = ("windows", "macos", "linux")
CONFIG_PATHS = {
    "windows": r"C:\ProgramData\fleetkeep\agent.toml",
    "macos": "/Library/Application Support/fleetkeep/agent.toml",
    "linux": "/etc/fleetkeep/agent.toml",
}


def install_command(
    platform: str, server_url: str, token: str, *, use_os_account: bool = False
) -> str:
    """The command an admin pastes into their deployment tool for ``platform``."""
    server_url = server_url.rstrip("/")
    if platform == "windows":
        extra = " USEOSACCOUNT=1" if use_os_account else ""
        return (
            f'msiexec /i fleetkeep-agent.msi /qn SERVER="{_msi(server_url)}" '
            f'TOKEN="{_msi(token)}"{extra}\n'
            f"rem The MSI writes {CONFIG_PATHS['windows']}; the agent activates on first start.\n"
        )
    config = _toml(server_url, token, use_os_account)
    if platform == "macos":
        path = CONFIG_PATHS["macos"]
        return (
            "# Jamf / any MDM script: write the deploy file, then install the package.\n"
            f"mkdir -p {shlex.quote(path.rsplit('/', 1)[0])}\n"
            f"printf %s {shlex.quote(config)} > {shlex.quote(path)}\n"
            f"chmod 600 {shlex.quote(path)}\n"
            "installer -pkg fleetkeep-agent.pkg -target /\n"
        )
    if platform == "linux":
        env = f"FLEETKEEP_SERVER={shlex.quote(server_url)} FLEETKEEP_TOKEN={shlex.quote(token)}"
        if use_os_account:
            env += " FLEETKEEP_USE_OS_ACCOUNT=1"
        return f"env {env} fleetkeep-agent activate\n"
    raise InvalidInput(
        f"unknown platform {platform!r}; one of {', '.join(PLATFORMS)}", field="platform"
    )


def _toml(server_url: str, token: str, use_os_account: bool) -> str:
    lines = [f"server = {_quote(server_url)}", f"token = {_quote(token)}"]
    if use_os_account:
        lines.append("use_os_account = true")
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _msi(value: str) -> str:
    if '"' in value:
        raise InvalidInput("MSI property values cannot contain double quotes")
    return value
