"""Baseline schema: hashed visitors with sharded counters; imports the original app's table.

The original app stored raw IP addresses in ``visitor(id, ip, visits)``. When that table exists its
rows are converted to keyed hashes (rows of one normalised address merged, every count kept) and
the table is dropped, so no raw address survives the upgrade.

A migration must not change when the app does: what it needs of the app (the shard count, the address
normalisation and visitor key of this revision) is copied here, and env.py hands it the secret.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
from collections import defaultdict
from collections.abc import Iterable

import sqlalchemy as sa
from alembic import context, op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

LEGACY_TABLE = "visitor"
# Legacy values that were never an address (e.g. the "n/a" of merged header lists) keep their
# count under a key from their raw text; the prefix keeps them apart from any real address.
LEGACY_UNPARSEABLE_PREFIX = "legacy-unparseable:"
BATCH = 10_000
COUNTER_SHARDS = 16
MAX_ADDRESS_LENGTH = 64


def upgrade() -> None:
    visitors = op.create_table(
        "visitors",
        sa.Column("visitor_key", sa.LargeBinary(32), primary_key=True),
        sa.Column("visits", sa.BigInteger(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_day", sa.Date(), nullable=False),
        sa.Column("prev_day", sa.Date(), nullable=True),
    )
    totals = op.create_table(
        "total_shards",
        sa.Column("shard", sa.SmallInteger(), primary_key=True, autoincrement=False),
        sa.Column("visits", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("visitors", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.create_table(
        "daily_shards",
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("shard", sa.SmallInteger(), primary_key=True, autoincrement=False),
        sa.Column("visits", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("unique_visitors", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("new_visitors", sa.BigInteger(), nullable=False, server_default="0"),
    )
    bind = op.get_bind()
    visit_total, visitor_total = 0, 0
    if sa.inspect(bind).has_table(LEGACY_TABLE):
        visit_total, visitor_total = _import_legacy(bind, visitors)
        op.drop_table(LEGACY_TABLE)
    op.bulk_insert(
        totals,
        [
            {"shard": shard, "visits": visit_total if shard == 0 else 0, "visitors": visitor_total if shard == 0 else 0}
            for shard in range(COUNTER_SHARDS)
        ],
    )


def _import_legacy(bind: sa.Connection, visitors: sa.Table) -> tuple[int, int]:
    secret: bytes = context.config.attributes["secret_key"]
    counts: dict[bytes, int] = defaultdict(int)
    rows = bind.execute(sa.text(f"SELECT ip, visits FROM {LEGACY_TABLE}"))  # noqa: S608 - constant name
    for raw_ip, visits in rows:
        address = normalise_address(raw_ip)
        key = visitor_key(secret, address if address else LEGACY_UNPARSEABLE_PREFIX + str(raw_ip))
        counts[key] += int(visits or 0)
    now = dt.datetime.now(dt.UTC)
    # Pretend the last visit was yesterday so each legacy visitor's next visit counts for "today".
    yesterday = now.date() - dt.timedelta(days=1)
    for batch in _batches(counts.items()):
        bind.execute(
            visitors.insert(),
            [
                {
                    "visitor_key": key,
                    "visits": visits,
                    "first_seen": now,
                    "last_seen": now,
                    "last_day": yesterday,
                    "prev_day": None,
                }
                for key, visits in batch
            ],
        )
    return sum(counts.values()), len(counts)


def _batches(items: Iterable[tuple[bytes, int]]) -> Iterable[list[tuple[bytes, int]]]:
    batch: list[tuple[bytes, int]] = []
    for item in items:
        batch.append(item)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def normalise_address(raw: str | None) -> str | None:
    """Canonical text of an IP address (app/identity.py at this revision), or None when it is not one."""
    if raw is None:
        return None
    candidate = raw.strip()
    if not candidate or len(candidate) > MAX_ADDRESS_LENGTH:
        return None
    if candidate.startswith("["):
        closing = candidate.find("]")
        if closing == -1:
            return None
        candidate = candidate[1:closing]
    elif candidate.count(":") == 1:
        candidate = candidate.split(":", 1)[0]
    candidate = candidate.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def visitor_key(secret: bytes, normalised_address: str) -> bytes:
    return hmac.new(secret, normalised_address.encode("ascii"), hashlib.sha256).digest()


def downgrade() -> None:
    op.drop_table("daily_shards")
    op.drop_table("total_shards")
    op.drop_table("visitors")
