"""Recording a visit and reading the totals.

PostgreSQL does a visit in one statement (one round trip, its own transaction): the visitor upsert,
the daily and total counter shards and the totals read are chained with data-modifying CTEs, so a
visit can neither lose an update nor fail on a first-visit race. SQLite (development only) does the
same steps inside one ``BEGIN IMMEDIATE`` transaction, which serialises writers on that file.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Date, Engine, LargeBinary, bindparam, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from .models import COUNTER_SHARDS

STATS_DAYS = 30


@dataclass(frozen=True)
class VisitResult:
    visits: int
    is_new_visitor: bool
    is_new_today: bool
    total_visitors: int
    today_visitors: int


@dataclass(frozen=True)
class DailyUniques:
    day: dt.date
    unique_visitors: int


@dataclass(frozen=True)
class Stats:
    total_visitors: int
    total_visits: int
    daily: tuple[DailyUniques, ...]


def postgres_visit_sql(key: str, today: str, shard: str) -> str:
    """The visit statement, with SQL expressions (placeholders or values) for its three inputs.

    The app binds driver placeholders; ``make bench`` hands the same statement to pgbench with
    pgbench expressions, so the database ceiling it measures is exactly the app's work.
    """
    # xmax = 0 only on a freshly inserted row: the portable way to tell insert from update in one upsert.
    # The inputs are placeholders or pgbench expressions, never data: no injection (S608).
    return f"""
    WITH visitor AS (
        INSERT INTO visitors AS v (visitor_key, visits, first_seen, last_seen, last_day, prev_day)
        VALUES ({key}, 1, now(), now(), {today}, NULL)
        ON CONFLICT (visitor_key) DO UPDATE
           SET visits = v.visits + 1, last_seen = now(), prev_day = v.last_day, last_day = EXCLUDED.last_day
        RETURNING visits, (xmax = 0) AS is_new_visitor, (prev_day IS DISTINCT FROM last_day) AS is_new_today
    ), flags AS (
        SELECT visits, is_new_visitor, is_new_today,
               is_new_visitor::int AS new_visitor, is_new_today::int AS new_today
          FROM visitor
    ), daily AS (
        INSERT INTO daily_shards AS d (day, shard, visits, unique_visitors, new_visitors)
        SELECT {today}, {shard}, 1, new_today, new_visitor FROM flags
        ON CONFLICT (day, shard) DO UPDATE
           SET visits = d.visits + 1,
               unique_visitors = d.unique_visitors + EXCLUDED.unique_visitors,
               new_visitors = d.new_visitors + EXCLUDED.new_visitors
    ), total AS (
        INSERT INTO total_shards AS t (shard, visits, visitors)
        SELECT {shard}, 1, new_visitor FROM flags
        ON CONFLICT (shard) DO UPDATE
           SET visits = t.visits + 1, visitors = t.visitors + EXCLUDED.visitors
    )
    -- The sub-selects see the snapshot from before this statement, so add our own increments.
    SELECT f.visits, f.is_new_visitor, f.is_new_today,
           (SELECT coalesce(sum(visitors), 0) FROM total_shards) + f.new_visitor AS total_visitors,
           (SELECT coalesce(sum(unique_visitors), 0) FROM daily_shards WHERE day = {today}) + f.new_today
               AS today_visitors
      FROM flags f
    """  # noqa: S608


# A server-side prepared statement: PostgreSQL parses and plans the visit once per connection instead
# of on every visit (docs/capacity.md). Prepared on a connection's first visit, not when it connects:
# migrations connect before the tables exist. A later migration makes PostgreSQL re-plan it by itself.
VISIT_STATEMENT_NAME = "tally_visit"
_PREPARE_VISIT = (
    f"PREPARE {VISIT_STATEMENT_NAME} (bytea, date, smallint) AS {postgres_visit_sql(key='$1', today='$2', shard='$3')}"
)
# Run as driver SQL: SQLAlchemy's compile, bind and result-typing steps cost more CPU than the
# driver's own work for this one statement (docs/capacity.md). psycopg2's client-side binding: psycopg 3
# binds on the server, where EXECUTE takes no parameters.
_EXECUTE_VISIT = f"EXECUTE {VISIT_STATEMENT_NAME} (%(key)s, %(today)s, %(shard)s)"
_PLAIN_VISIT = postgres_visit_sql(key="%(key)s", today="%(today)s", shard="%(shard)s")
# invalid_sql_statement_name, duplicate_prepared_statement: raised before the statement runs.
_PREPARED_STATEMENT_LOST = {"26000", "42P05"}

_SQLITE_SELECT_VISITOR = (
    text("SELECT visits, last_day FROM visitors WHERE visitor_key = :key")
    .bindparams(bindparam("key", type_=LargeBinary))
    .columns(visits=BigInteger, last_day=Date)
)
_SQLITE_INSERT_VISITOR = text(
    "INSERT INTO visitors (visitor_key, visits, first_seen, last_seen, last_day, prev_day)"
    " VALUES (:key, 1, :now, :now, :today, NULL)"
)
_SQLITE_UPDATE_VISITOR = text(
    "UPDATE visitors SET visits = visits + 1, last_seen = :now, prev_day = last_day, last_day = :today"
    " WHERE visitor_key = :key"
)
_SQLITE_COUNTERS = (
    text(
        "INSERT INTO daily_shards (day, shard, visits, unique_visitors, new_visitors)"
        " VALUES (:today, :shard, 1, :new_today, :new_visitor)"
        " ON CONFLICT (day, shard) DO UPDATE SET visits = visits + 1,"
        " unique_visitors = unique_visitors + excluded.unique_visitors,"
        " new_visitors = new_visitors + excluded.new_visitors"
    ),
    text(
        "INSERT INTO total_shards (shard, visits, visitors) VALUES (:shard, 1, :new_visitor)"
        " ON CONFLICT (shard) DO UPDATE SET visits = visits + 1, visitors = visitors + excluded.visitors"
    ),
)
_SQLITE_TOTALS = (
    text(
        "SELECT (SELECT coalesce(sum(visitors), 0) FROM total_shards) AS total_visitors,"
        " (SELECT coalesce(sum(unique_visitors), 0) FROM daily_shards WHERE day = :today) AS today_visitors"
    )
    .bindparams(bindparam("today", type_=Date))
    .columns(total_visitors=BigInteger, today_visitors=BigInteger)
)

_TOTALS = text(
    "SELECT coalesce(sum(visitors), 0) AS visitors, coalesce(sum(visits), 0) AS visits FROM total_shards"
).columns(visitors=BigInteger, visits=BigInteger)
_DAILY = (
    text(
        "SELECT day, sum(unique_visitors) AS unique_visitors FROM daily_shards"
        " WHERE day > :since GROUP BY day ORDER BY day"
    )
    .bindparams(bindparam("since", type_=Date))
    .columns(day=Date, unique_visitors=BigInteger)
)


def utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def record_visit(engine: Engine, key: bytes, today: dt.date | None = None) -> VisitResult:
    day = today or utc_today()
    shard = random.randrange(COUNTER_SHARDS)
    if engine.dialect.name == "postgresql":
        visits, is_new_visitor, is_new_today, total_visitors, today_visitors = _postgres_visit(
            engine, {"key": key, "today": day, "shard": shard}
        )
        # PostgreSQL's sum() over bigint is numeric (Decimal in Python): hand out plain ints.
        return VisitResult(int(visits), is_new_visitor, is_new_today, int(total_visitors), int(today_visitors))
    with engine.begin() as connection:
        return _record_visit_sqlite(connection, key, day, shard)


def _postgres_visit(engine: Engine, params: dict[str, object]) -> tuple[Any, ...]:
    """The visit on the pooled driver connection itself, below SQLAlchemy's Connection.

    SQLAlchemy's Connection, execution context and result cost about as much client CPU again as the
    rest of the visit's database work (docs/capacity.md, "Third pass"). What they did for the visit is
    done here: the pool's checkout (with its check for a connection the server closed, app/db.py) and
    check-in, a driver error raised as SQLAlchemy's (so an outage is a 503, app/errors.py), and a
    connection found dead invalidated so the pool does not hand it out again.
    """
    dbapi_error: Any = engine.dialect.loaded_dbapi.Error
    try:
        connection = engine.raw_connection()
    except dbapi_error as error:
        raise _wrapped(engine, error, None, invalidated=False) from error
    cursor = None
    try:
        cursor = connection.cursor()
        row = execute_visit(cursor, connection.info, params)
        # A no-op without a round trip on the app's autocommit engine (app/db.py); commits elsewhere.
        connection.commit()
        return tuple(row)
    except dbapi_error as error:
        invalidated = engine.dialect.is_disconnect(error, connection, cursor)
        if invalidated:
            connection.invalidate(error)
        raise _wrapped(engine, error, params, invalidated=invalidated) from error
    finally:
        if cursor is not None and not cursor.closed:
            cursor.close()
        connection.close()


def execute_visit(cursor: Any, info: dict[Any, Any], params: dict[str, object]) -> Any:
    """The visit statement on a driver cursor, prepared once per server session: a visit's one round trip.

    ``info`` belongs to the driver connection: the pool keeps it with the connection, so a replaced one
    starts empty (bench/floor.py keeps its own)."""
    prepared = info.get(VISIT_STATEMENT_NAME)
    if prepared is not False:
        try:
            if prepared is None:
                cursor.execute(_PREPARE_VISIT)
                info[VISIT_STATEMENT_NAME] = True
            cursor.execute(_EXECUTE_VISIT, params)
            return cursor.fetchone()
        except Exception as error:
            if getattr(error, "pgcode", None) not in _PREPARED_STATEMENT_LOST:
                raise
            # Not this connection's own server session any more (a pooler such as PgBouncer in
            # transaction mode, or a session reset): nothing ran, so run the statement in full, from now on.
            info[VISIT_STATEMENT_NAME] = False
    cursor.execute(_PLAIN_VISIT, params)
    return cursor.fetchone()


def _wrapped(engine: Engine, error: Exception, params: dict[str, object] | None, *, invalidated: bool) -> Exception:
    """The driver's error as SQLAlchemy raises it (OperationalError for a refused or dropped connection)."""
    wrapped = DBAPIError.instance(
        _PLAIN_VISIT,
        params,
        error,
        engine.dialect.loaded_dbapi.Error,
        hide_parameters=engine.hide_parameters,
        connection_invalidated=invalidated,
        dialect=engine.dialect,
    )
    # Only an error marked not to be wrapped (DontWrapMixin) comes back as it was.
    return wrapped if isinstance(wrapped, Exception) else error


def _record_visit_sqlite(connection: Connection, key: bytes, day: dt.date, shard: int) -> VisitResult:
    now = dt.datetime.now(dt.UTC).isoformat(sep=" ")
    existing = connection.execute(_SQLITE_SELECT_VISITOR, {"key": key}).first()
    params = {"key": key, "now": now, "today": day.isoformat(), "shard": shard}
    if existing is None:
        connection.execute(_SQLITE_INSERT_VISITOR, params)
        visits, is_new_visitor, is_new_today = 1, True, True
    else:
        connection.execute(_SQLITE_UPDATE_VISITOR, params)
        visits, is_new_visitor, is_new_today = existing.visits + 1, False, existing.last_day != day
    flags = {"new_visitor": int(is_new_visitor), "new_today": int(is_new_today)}
    for statement in _SQLITE_COUNTERS:
        connection.execute(statement, params | flags)
    totals = connection.execute(_SQLITE_TOTALS, {"today": day}).one()
    return VisitResult(visits, is_new_visitor, is_new_today, int(totals.total_visitors), int(totals.today_visitors))


def read_stats(engine: Engine, today: dt.date | None = None) -> Stats:
    day = today or utc_today()
    first_day = day - dt.timedelta(days=STATS_DAYS - 1)
    with engine.connect() as connection:
        totals = connection.execute(_TOTALS).one()
        per_day = {
            row.day: int(row.unique_visitors)
            for row in connection.execute(_DAILY, {"since": first_day - dt.timedelta(days=1)})
        }
    daily = tuple(
        DailyUniques(first_day + dt.timedelta(days=offset), per_day.get(first_day + dt.timedelta(days=offset), 0))
        for offset in range(STATS_DAYS)
    )
    return Stats(total_visitors=int(totals.visitors), total_visits=int(totals.visits), daily=daily)
