"""``fleetkeep-agent``: activate, back up, restore, report status."""

from __future__ import annotations

import typer

from fleetkeep import __version__

app = typer.Typer(help="fleetkeep endpoint agent.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the agent version."""
    typer.echo(__version__)


def main() -> None:
    app()
