"""Database engine, sessions and migrations, identical on SQLite and PostgreSQL."""

from __future__ import annotations

import enum
import json
import select
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import psycopg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    Enum,
    MetaData,
    Table,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.exc import DisconnectionError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both back ends (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def str_enum(enum_cls: type[enum.StrEnum], length: int = 20) -> Enum:
    """A portable enum column that stores the member's value ("read-only"), not its name."""
    return Enum(
        enum_cls,
        native_enum=False,
        length=length,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            json_serializer=_dumps,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(
        url, pool_size=10, max_overflow=20, pool_recycle=3600, json_serializer=_dumps
    )
    event.listen(engine, "checkout", _drop_closed_connection)
    return engine


def _drop_closed_connection(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Replace a pooled PostgreSQL connection the server has closed, before it is used.

    Why not ``pool_pre_ping``: that is a round trip on every checkout (every request). A
    server that restarts or ends a session (``pg_terminate_backend``, idle timeouts) sends a
    termination notice and closes the socket, so an idle connection with anything to read is
    dead; a zero-timeout ``select`` sees that without a round trip. SQLAlchemy then opens a
    new connection in its place. A silently vanished peer (no FIN) is not seen here; its first
    query fails, SQLAlchemy invalidates it, and ``pool_recycle`` bounds how old one can be.
    """
    readable, _, _ = select.select([dbapi_connection.fileno()], [], [], 0)
    if readable or dbapi_connection.closed:
        raise DisconnectionError("the server closed this pooled connection")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def insert_rows(session: Session, model: type[Base], rows: Sequence[dict[str, Any]]) -> None:
    """Bulk insert in the session's transaction: COPY on PostgreSQL, executemany on SQLite.

    Why: executemany through psycopg costs ~0.4 ms a row; COPY writes 100,000 rows in about a
    second. Every row must have the same keys; column defaults are not applied.
    """
    if not rows:
        return
    table = cast(Table, model.__table__)
    columns = list(rows[0])
    if session.get_bind().dialect.name != "postgresql":
        session.execute(table.insert(), list(rows))
        return
    json_columns = {c.name for c in table.columns if isinstance(c.type, JSON)}
    _copy(
        session,
        table,
        columns,
        ([_copy_value(row[c], c in json_columns) for c in columns] for row in rows),
    )


def copy_rows(
    session: Session, model: type[Base], columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Bulk insert of rows given as tuples in ``columns`` order, each value already what the
    driver takes (an enum column's value, no JSON columns): COPY on PostgreSQL, executemany on
    SQLite.

    Why: for a sync's 100,000 new users, ``insert_rows``' conversion of every value of every
    row dict costs more than the COPY itself.
    """
    table = cast(Table, model.__table__)
    if session.get_bind().dialect.name != "postgresql":
        batch = [dict(zip(columns, row, strict=True)) for row in rows]
        if batch:
            session.execute(table.insert(), batch)
        return
    _copy(session, table, columns, rows)


def _copy(
    session: Session, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """COPY rows into a table on the session's PostgreSQL connection (in its transaction)."""
    names = ", ".join(f'"{c}"' for c in columns)
    raw = session.connection().connection.driver_connection
    assert raw is not None
    try:
        with (
            raw.cursor() as cursor,
            cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy,
        ):
            for row in rows:
                copy.write_row(row)
    except psycopg.IntegrityError as exc:
        raise IntegrityError(f"COPY {table.name}", None, exc) from exc


def _copy_value(value: Any, is_json: bool) -> Any:
    if value is None:
        return None
    if is_json:
        return _dumps(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits when the block ends normally and rolls back otherwise."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine) -> None:
    """Bring the schema to head; replicas starting together on PostgreSQL take turns."""
    config = _alembic_config(engine)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(72170001)"))
            try:
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
                conn.commit()
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(72170001)"))
                conn.commit()
    else:
        command.upgrade(config, "head")


@lru_cache(maxsize=1)
def code_head() -> str | None:
    """The head revision of the migrations shipped with this code (read once: it cannot change)."""
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    return ScriptDirectory.from_config(config).get_current_head()


def migration_state(engine: Engine) -> tuple[str | None, str | None]:
    """(current revision in the database, head revision of the code)."""
    # Read alembic_version directly: a MigrationContext per /readyz call logs two lines each time.
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None, code_head()
        current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return current, code_head()
