"""The PostgreSQL advisory lock every ``flask db upgrade`` holds, so replicas migrate one at a time."""

MIGRATION_LOCK_ID = 0x7A11_0001
