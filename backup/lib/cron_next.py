"""Next run times of a standard 5-field cron expression, in UTC, computed by croniter (Debian's
python3-croniter in the image). Used by backup-scheduler; one invocation answers one question.

usage: python3 cron_next.py EXPRESSION AFTER_EPOCH COUNT
Prints COUNT Unix times, one per line, each strictly after the previous; exit 2 with one readable
line when the expression is not a valid 5-field cron expression.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from croniter import croniter  # type: ignore[import-untyped]


def main(argv: list[str]) -> int:
    expression, after, count = argv[1], int(argv[2]), int(argv[3])
    # Five fields only: croniter also takes a sixth (seconds) field, which standard cron does not.
    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        print(f"not a 5-field cron expression (minute hour day-of-month month day-of-week): {expression!r}")
        return 2
    schedule = croniter(expression, datetime.fromtimestamp(after, UTC))
    for _ in range(count):
        print(int(schedule.get_next(float)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
