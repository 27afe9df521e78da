"""``fleetkeep key-connector``: run the connector, or manage its key file."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from fleetkeep.connector.client import Connector, ConnectorRefused, run_connectors, socket_url
from fleetkeep.keys.errors import KeyFileInvalid
from fleetkeep.keys.keyfile import add_key, ensure_local_key, load_keys

connector_app = typer.Typer(
    help="The key connector: holds the organization key on your side and serves the server.",
    invoke_without_command=True,
)

KeyFile = Annotated[
    Path,
    typer.Option(
        "--key-file",
        envvar="FLEETKEEP_CONNECTOR_KEY_FILE",
        help="the organization key file (mode 0600)",
    ),
]

# Exit codes a supervisor can act on: 3 = token refused, 4 = different key, 2 = bad usage.
_EXIT = {"connector_token_invalid": 3, "key_check_mismatch": 4}


@connector_app.callback()
def key_connector(
    ctx: typer.Context,
    server: Annotated[
        list[str] | None, typer.Option("--server", help="server URL; repeat once per replica")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FLEETKEEP_CONNECTOR_TOKEN", help="connector token (better from the env)"
        ),
    ] = None,
    key_file: Annotated[
        Path | None, typer.Option("--key-file", envvar="FLEETKEEP_CONNECTOR_KEY_FILE")
    ] = None,
    allow_insecure: Annotated[
        bool, typer.Option(help="allow ws:// to a non-loopback server")
    ] = False,
    max_backoff: Annotated[float, typer.Option(help="longest wait between reconnects (s)")] = 30.0,
) -> None:
    """Connect out to the server(s) and answer wrap/unwrap requests until stopped."""
    if ctx.invoked_subcommand:
        return
    if not server or not token or key_file is None:
        _fail("--server, --token (or FLEETKEEP_CONNECTOR_TOKEN) and --key-file are required", 2)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        keys = load_keys(key_file)
        urls = [socket_url(s, allow_insecure=allow_insecure) for s in server]
    except KeyFileInvalid as exc:
        _fail(exc.detail, 2)
    except ValueError as exc:
        _fail(str(exc), 2)
    connectors = [
        Connector(url, token, {k.kcv: k for k in keys}, keys[-1].kcv, max_backoff) for url in urls
    ]
    print(
        f"key connector serving {len(keys)} key(s), current {keys[-1].kcv}, for {', '.join(urls)}",
        file=sys.stderr,
        flush=True,
    )
    try:
        asyncio.run(run_connectors(connectors))
    except* ConnectorRefused as group:
        refused = group.exceptions[0]
        assert isinstance(refused, ConnectorRefused)
        _fail(f"the server refused this connector: {refused}", _EXIT.get(refused.code, 1))
    except* KeyboardInterrupt:
        raise typer.Exit(130) from None


@connector_app.command("new-key")
def new_key(key_file: KeyFile) -> None:
    """Create the key file, or add a new current key to it (then rotate on the server)."""
    try:
        key = add_key(key_file) if key_file.exists() else ensure_local_key(key_file)
    except KeyFileInvalid as exc:
        _fail(exc.detail, 2)
    print(f"current key check value: {key.kcv}  ({key_file})")


@connector_app.command("show-key")
def show_key(key_file: KeyFile) -> None:
    """List the key check values in the key file (never the keys)."""
    try:
        keys = load_keys(key_file)
    except KeyFileInvalid as exc:
        _fail(exc.detail, 2)
    for i, key in enumerate(keys):
        marker = " (current)" if i == len(keys) - 1 else ""
        print(f"{key.kcv}  created {key.created_at}{marker}")


def _fail(message: str, code: int) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(code)
