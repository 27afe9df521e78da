"""What every admin CLI command shares: settings, a database transaction, errors, tables."""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache, wraps
from typing import Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.audit.service import Actor
from fleetkeep.db import make_engine, make_sessionmaker, transaction, upgrade
from fleetkeep.errors import FleetkeepError
from fleetkeep.settings import Settings, SettingsError, load_settings

# Piped output (scripts, CI) is not cut to 80 columns: a truncated email is worse than a wide line.
console = Console(width=None if sys.stdout.isatty() else 240)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 240)

P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@lru_cache(maxsize=1)
def settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        fail(str(exc), 2)


@lru_cache(maxsize=1)
def engine() -> Engine:
    eng = make_engine(settings().database_url)
    upgrade(eng)
    return eng


def sessions() -> sessionmaker[Session]:
    return make_sessionmaker(engine())


@contextmanager
def db() -> Iterator[Session]:
    with transaction(sessions()) as session:
        yield session


def actor() -> Actor:
    return Actor(f"cli:{os.environ.get('SUDO_USER') or getpass.getuser()}")


def handles_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Domain errors become one red line and exit code 1 (2 for invalid input)."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except FleetkeepError as exc:
            fail(f"{exc.detail} [{exc.code}]", 2 if exc.status in (400, 422) else 1)

    return wrapper


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    console.print(table)
