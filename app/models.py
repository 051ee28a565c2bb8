"""Schema. Totals live in sharded counter rows so that no request counts the visitor table and
no single hot row serialises every writer."""

from __future__ import annotations

import datetime as dt

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import BigInteger, Date, DateTime, LargeBinary, SmallInteger
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Enough to spread 2 replicas x 2 workers x 4 threads of writers; summing 16 rows stays O(1).
COUNTER_SHARDS = 16


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class Visitor(Base):
    __tablename__ = "visitors"

    visitor_key: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    visits: Mapped[int] = mapped_column(BigInteger, nullable=False)
    first_seen: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    # The UTC day of the latest visit and of the one before it: the upsert compares them to tell
    # a visitor's first visit of the day without a second query.
    last_day: Mapped[dt.date] = mapped_column(Date, nullable=False)
    prev_day: Mapped[dt.date | None] = mapped_column(Date, nullable=True)


class TotalShard(Base):
    __tablename__ = "total_shards"

    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    visits: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    visitors: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class DailyShard(Base):
    __tablename__ = "daily_shards"

    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    visits: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    unique_visitors: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    new_visitors: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
