from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleetkeep.db import Base, utcnow


class JobLease(Base):
    """One row per job: whoever holds an unexpired lease runs it.

    A run is due when ``last_started_at`` is an interval old; the interval comes from the
    running code and settings, so changing it takes effect at once.
    """

    __tablename__ = "job_leases"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    last_started_at: Mapped[datetime | None] = mapped_column(default=None)
    holder: Mapped[str | None] = mapped_column(String(200), default=None)
    leased_until: Mapped[datetime | None] = mapped_column(default=None)


class JobRun(Base):
    __tablename__ = "job_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(
        String(100), ForeignKey("job_leases.name", ondelete="CASCADE"), index=True
    )
    holder: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    status: Mapped[str] = mapped_column(String(20), default="running")
    error: Mapped[str | None] = mapped_column(Text, default=None)
