"""The ``fleetkeep`` admin command: init, serve, and one sub-command per capability."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from typing import Annotated, Any

import typer

from fleetkeep import __version__
from fleetkeep.admins import service as admins
from fleetkeep.admins.cli import admins_app, read_password, tokens_app
from fleetkeep.admins.models import Role
from fleetkeep.clikit import actor, console, db, engine, fail, handles_errors, settings
from fleetkeep.connector.cli import connector_app
from fleetkeep.deployment.cli import deploy_app, devices_app
from fleetkeep.deployment.cli import tokens_app as deployment_tokens_app
from fleetkeep.directories.cli import directories_app
from fleetkeep.directories.cloud_cli import entra_app, google_app
from fleetkeep.directories.csv_import_cli import import_users
from fleetkeep.directories.scim.cli import scim_app
from fleetkeep.identity.cli import profiles_app, regions_app, users_app
from fleetkeep.keys.cli import keys_app
from fleetkeep.keys.service import init_keys
from fleetkeep.ops_cli import alerts_app, audit, db_app, jobs_app
from fleetkeep.vault.catalogue_cli import snapshots_app
from fleetkeep.vault.cli import check, restore

app = typer.Typer(
    help="fleetkeep: self-hosted endpoint data protection.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(users_app, name="users")
users_app.command("import")(import_users)
app.add_typer(profiles_app, name="profiles")
app.add_typer(regions_app, name="regions")
app.add_typer(admins_app, name="admins")
app.add_typer(tokens_app, name="api-tokens")
app.add_typer(alerts_app, name="alerts")
app.add_typer(jobs_app, name="jobs")
app.add_typer(db_app, name="db")
app.add_typer(directories_app, name="directories")
app.add_typer(scim_app, name="scim")
app.add_typer(entra_app, name="entra")
app.add_typer(google_app, name="google")
app.add_typer(deployment_tokens_app, name="tokens")
app.add_typer(devices_app, name="devices")
app.add_typer(deploy_app, name="deploy")
app.add_typer(keys_app, name="keys")
app.add_typer(connector_app, name="key-connector")
app.add_typer(snapshots_app, name="snapshots")
app.command("audit")(audit)
app.command("check")(check)
app.command("restore")(restore)


@app.command()
def version() -> None:
    console.print(__version__)


@app.command()
@handles_errors
def init(
    email: Annotated[
        str, typer.Option(help="the first admin's email")
    ] = "admin@localhost.localdomain",
    password_stdin: Annotated[bool, typer.Option(help="read the password from stdin")] = False,
) -> None:
    """Create the data directory, the database and the first admin (an owner).

    The password comes from stdin (--password-stdin), from FLEETKEEP_ADMIN_PASSWORD, or is
    generated and printed once. Running init again changes nothing.
    """
    cfg = settings()
    cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine()
    password = read_password(password_stdin) or os.environ.get("FLEETKEEP_ADMIN_PASSWORD")
    with db() as session:
        init_keys(session, cfg)  # the local key file (mode 0600) and key version 1
        if admins.count_admins(session):
            console.print(
                f"already initialised: {cfg.data_dir} (database {_safe_url(cfg.database_url)})"
            )
            return
        generated = password is None
        password = password or admins.generate_password()
        admin = admins.create_admin(session, actor(), email, password, Role.OWNER, "Owner")
    console.print(f"data directory: {cfg.data_dir}")
    console.print(f"database:       {_safe_url(cfg.database_url)}")
    console.print(f"first admin:    [bold]{admin.email}[/] (owner)")
    if generated:
        console.print(f"password:       [bold]{password}[/]  (shown once)")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="listen address")] = None,
    port: Annotated[int | None, typer.Option(help="listen port")] = None,
    no_jobs: Annotated[bool, typer.Option("--no-jobs", help="do not run periodic jobs")] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            show_default=False,
            help="server processes sharing the port (PostgreSQL only); one process uses "
            "at most about one core  [default: one per core on PostgreSQL, 1 on SQLite]",
        ),
    ] = None,
) -> None:
    """Run the server (API, device API, console) with migrations applied first."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from fleetkeep.observability import configure_logging
    from fleetkeep.web.app import WORKER_JOBS_ENV, create_app, settle_heap
    from fleetkeep.web.sockets import bind_worker_socket

    cfg = settings()
    if host:
        cfg.listen_host = host
    if port:
        cfg.listen_port = port
    postgresql = cfg.database_url.startswith("postgresql")
    if workers is None:
        # One process per core: a single one is held to about one core by the GIL.
        workers = (os.cpu_count() or 1) if postgresql else 1
    if workers > 1 and not postgresql:
        fail("--workers needs PostgreSQL: SQLite takes one writer at a time", 2)
    configure_logging(cfg.log_level, cfg.log_format)
    eng = engine()
    console.print(
        f"fleetkeep {__version__} on http://{cfg.listen_host}:{cfg.listen_port}/ "
        f"(database {_safe_url(cfg.database_url)}, {workers} process(es))",
        highlight=False,
    )
    options: dict[str, Any] = {
        "host": cfg.listen_host,
        "port": cfg.listen_port,
        "log_config": None,
        "proxy_headers": True,
        "server_header": False,
    }
    if workers == 1:
        app = create_app(cfg, engine=eng, run_jobs=not no_jobs)
        settle_heap()
        uvicorn.run(app, **options)
        return
    # Workers are fresh interpreters that build their own app from the environment (the
    # migrations are already applied); jobs are safe to run in every one, as in replicas.
    eng.dispose()
    os.environ["FLEETKEEP_LISTEN_HOST"] = cfg.listen_host
    os.environ["FLEETKEEP_LISTEN_PORT"] = str(cfg.listen_port)
    os.environ[WORKER_JOBS_ENV] = "0" if no_jobs else "1"
    # uvicorn kills a worker that does not answer its health check within the timeout (5 s by
    # default); a worker still importing on a busy machine is not dead, and killing it only
    # starts another that is as slow (seen at load 15: no worker ever came up).
    config = uvicorn.Config(
        "fleetkeep.web.app:worker_app",
        factory=True,
        workers=workers,
        timeout_worker_healthcheck=60,
        **options,
    )
    # What ``uvicorn.run`` does for workers, with a listening socket of each worker's own.
    family = socket.AF_INET6 if ":" in cfg.listen_host else socket.AF_INET
    listener = bind_worker_socket(family, (cfg.listen_host, cfg.listen_port))
    with contextlib.suppress(KeyboardInterrupt):
        Multiprocess(config, sockets=[listener]).run()


def _safe_url(url: str) -> str:
    """The database URL without a password, for printing."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except SystemExit:
        raise
    except BaseException as exc:  # pragma: no cover - last resort, keeps secrets out of output
        print(f"fleetkeep: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
