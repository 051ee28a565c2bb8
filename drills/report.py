"""What a drill measured, the rules it is judged by, and how it is printed.

Counting rule (the "zero lost counts" check). Every ``200`` on ``GET /`` carrying the visit line
was produced after the visit's single SQL statement committed, so each one is exactly one row
increment in ``visitors.visits``. A request that did not end in such a 200 may or may not have
been counted:

* a 503 from the app: the statement failed and was rolled back, so normally no count. The one
  exception is a commit whose acknowledgement was lost when the database went away at that very
  moment (the row is durable, the app saw an error);
* a 503 from the load balancer (no healthy server) or a 429: the app never saw it, no count;
* a reset connection or a timeout: the app may have committed before the connection died;
* a request the balancer retried on another server after the first one died mid-request: the
  dead server may have committed it and the second one commits it again.

Hence, with ``ok`` = successful visit responses, ``failed`` = other visit outcomes and
``retried`` = the balancer's retry counter, the database delta must satisfy
``ok <= delta <= ok + failed + retried``, and ``delta == ok`` when ``failed == retried == 0``.
``lost = max(0, ok - delta)`` must be 0: an acknowledged visit that is not in the database is the
one failure the product must never have.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Ledger:
    ok: int
    failed: int
    retried: int
    db_delta: int

    @property
    def lost(self) -> int:
        return max(0, self.ok - self.db_delta)

    @property
    def unacknowledged(self) -> int:
        """Counts in the database beyond the acknowledged visits (allowed up to failed + retried)."""
        return max(0, self.db_delta - self.ok)

    def violations(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"lost-counts: {self.lost} acknowledged visits are missing from the database")
        if self.unacknowledged > self.failed + self.retried:
            found.append(
                f"unexplained-counts: database has {self.unacknowledged} counts beyond the acknowledged visits, "
                f"more than the {self.failed} failed + {self.retried} retried requests can explain"
            )
        return found


@dataclass
class DrillResult:
    drill: str
    target: str
    mode: str
    figures: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    # Timing targets missed: reported, never a failure. How fast something recovers depends on how
    # busy the machine is; a drill fails on behaviour (statuses, counts, deadlines it waits for).
    slower_than_target: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.violations

    def check(self, condition: bool, key: str, message: str) -> None:
        """Record a violation as ``key: message``; tests select violations by key."""
        if not condition:
            self.violations.append(f"{key}: {message}")

    def timing(self, condition: bool, key: str, message: str) -> None:
        """Record a missed timing target as ``key: message`` (shown and written to JSON, not a failure)."""
        if not condition:
            self.slower_than_target.append(f"{key}: {message}")

    def violated(self, *keys: str) -> list[str]:
        return [v for v in self.violations if v.split(":", 1)[0] in keys]

    def violations_except(self, *keys: str) -> list[str]:
        return [v for v in self.violations if v.split(":", 1)[0] not in keys]

    def add_ledger(self, ledger: Ledger) -> None:
        self.figures.update(
            visits_ok=ledger.ok,
            visits_failed=ledger.failed,
            lb_retries=ledger.retried,
            db_visits_delta=ledger.db_delta,
            lost_counts=ledger.lost,
            unacknowledged_counts=ledger.unacknowledged,
        )
        self.violations += ledger.violations()

    def text(self) -> str:
        lines = [f"== drill {self.drill} ({self.target}, {self.mode}): {'PASS' if self.passed else 'FAIL'}"]
        width = max((len(key) for key in self.figures), default=0)
        for key, value in self.figures.items():
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            lines.append(f"   {key:<{width}}  {shown}")
        lines += [f"   VIOLATION: {violation}" for violation in self.violations]
        lines += [f"   SLOWER THAN TARGET (reported, not a failure): {miss}" for miss in self.slower_than_target]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"passed": self.passed}


def dump(results: list[DrillResult]) -> str:
    return json.dumps([r.as_dict() for r in results], indent=2, default=str)


def percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0
