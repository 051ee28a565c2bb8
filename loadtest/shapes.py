"""Load shapes: smoke, step (find the knee), spike and soak, chosen at run time.

Locust uses the first LoadTestShape it finds in the locustfile, so there is exactly one
(``TallyShape``) and it delegates to a plan picked by ``--shape``. Plans are plain classes on
purpose: a second LoadTestShape subclass in the locustfile would be picked up by Locust itself.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from locust import LoadTestShape
from locust.stats import calculate_response_time_percentile, diff_response_time_dicts

from loadtest import MAX_DURATION_S

SHAPES = ("smoke", "step", "spike", "soak")

DEFAULT_USERS = {"smoke": 10, "step": 10, "spike": 200, "soak": 50}
DEFAULT_DURATION_S = {"smoke": 10, "step": 0, "spike": 90, "soak": 600}

Tick = tuple[int, float] | None


@dataclass
class Limits:
    p95_ms: float
    max_fail_ratio: float


@dataclass
class StepResult:
    step: int
    users: int
    requests: int
    failures: int
    rps: float
    p50_ms: int
    p95_ms: int
    p99_ms: int
    fail_ratio: float
    good: bool


@dataclass
class Knee:
    """Users and throughput at the last step that stayed within the limits."""

    found: bool
    users: int | None = None
    rps: float | None = None
    p95_ms: int | None = None
    reason: str = ""
    steps: list[StepResult] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Plan:
    name = "abstract"

    def tick(self, run_time: float, stats: Any) -> Tick:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class Smoke(Plan):
    """All users at once, at a steady rate, for the duration.

    A handful of users for a few seconds: does every endpoint answer at all? It is also the drills'
    background load, for as long as the drill needs it (background.py stops it).
    """

    name = "smoke"

    def __init__(self, users: int, duration_s: float) -> None:
        self.users, self.duration_s = users, duration_s

    def tick(self, run_time: float, stats: Any) -> Tick:
        return None if run_time >= self.duration_s else (self.users, float(self.users))

    def describe(self) -> str:
        return f"smoke users={self.users} duration={self.duration_s:g}s"


class Soak(Plan):
    """Steady load for a bounded time: leaks, pool exhaustion, autovacuum and disk growth show up here."""

    name = "soak"

    def __init__(self, users: int, duration_s: float) -> None:
        self.users, self.duration_s = users, duration_s

    def tick(self, run_time: float, stats: Any) -> Tick:
        # Ramp over ~10 s so the first seconds do not measure connection set-up storms.
        return None if run_time >= self.duration_s else (self.users, max(1.0, self.users / 10))

    def describe(self) -> str:
        return f"soak users={self.users} duration={self.duration_s:g}s"


class Spike(Plan):
    """Baseline, a sudden jump to the peak, and back: does it absorb the burst and recover?"""

    name = "spike"

    def __init__(self, users: int, duration_s: float) -> None:
        self.peak, self.duration_s = users, duration_s
        self.baseline = max(1, users // 10)

    def tick(self, run_time: float, stats: Any) -> Tick:
        third = self.duration_s / 3
        if run_time >= self.duration_s:
            return None
        if third <= run_time < 2 * third:
            # All peak users within one second: that is what makes it a spike and not a ramp.
            return self.peak, float(self.peak)
        return self.baseline, float(self.peak)

    def describe(self) -> str:
        return f"spike baseline={self.baseline} peak={self.peak} duration={self.duration_s:g}s"


class Step(Plan):
    """Add ``step_users`` every ``step_seconds`` until p95 or the failure ratio crosses its limit.

    Each step is judged on its own requests only (a snapshot is taken after a settle period at the
    start of the step and diffed at its end), so one bad step is not diluted by the good ones before.
    """

    name = "step"

    def __init__(self, step_users: int, step_seconds: float, max_steps: int, limits: Limits) -> None:
        self.step_users, self.step_seconds, self.max_steps, self.limits = step_users, step_seconds, max_steps, limits
        self.settle_s = min(5.0, step_seconds / 4)
        self.current = -1
        self.snapshot: tuple[float, int, int, dict[int, int]] | None = None
        self.knee = Knee(found=False, reason="not started")

    def users_at(self, step: int) -> int:
        return self.step_users * (step + 1)

    def tick(self, run_time: float, stats: Any) -> Tick:
        step = int(run_time // self.step_seconds)
        if step != self.current:
            if self.current >= 0 and not self._judge(stats):
                return None
            if step >= self.max_steps:
                self.knee.reason = f"all {self.max_steps} steps within limits: capacity is above the last step"
                return None
            self.current, self.snapshot = step, None
        if self.snapshot is None and run_time - step * self.step_seconds >= self.settle_s:
            total = stats.total
            self.snapshot = (time.monotonic(), total.num_requests, total.num_failures, dict(total.response_times))
        return self.users_at(step), float(self.step_users)

    def _judge(self, stats: Any) -> bool:
        """Record the step that just ended; False when it broke a limit (the previous one is the knee)."""
        if self.snapshot is None:
            return True
        started, requests0, failures0, times0 = self.snapshot
        total = stats.total
        requests = total.num_requests - requests0
        failures = total.num_failures - failures0
        window = diff_response_time_dicts(dict(total.response_times), times0)
        elapsed = max(time.monotonic() - started, 1e-6)

        def pct(p: float) -> int:
            return calculate_response_time_percentile(window, requests, p) if requests else 0

        fail_ratio = failures / requests if requests else 1.0
        p95 = pct(0.95)
        good = requests > 0 and p95 <= self.limits.p95_ms and fail_ratio <= self.limits.max_fail_ratio
        result = StepResult(
            step=self.current + 1,
            users=self.users_at(self.current),
            requests=requests,
            failures=failures,
            rps=round(requests / elapsed, 1),
            p50_ms=pct(0.5),
            p95_ms=p95,
            p99_ms=pct(0.99),
            fail_ratio=round(fail_ratio, 5),
            good=good,
        )
        self.knee.steps.append(result)
        if good:
            self.knee.found, self.knee.users, self.knee.rps, self.knee.p95_ms = True, result.users, result.rps, p95
            self.knee.reason = "running"
            return True
        self.knee.reason = (
            f"step {result.step} ({result.users} users) broke the limits: p95={p95}ms"
            f" (limit {self.limits.p95_ms:g}), failures={fail_ratio:.2%} (limit {self.limits.max_fail_ratio:.2%})"
        )
        return False

    def describe(self) -> str:
        return (
            f"step +{self.step_users} users every {self.step_seconds:g}s, at most {self.max_steps} steps,"
            f" limits p95<={self.limits.p95_ms:g}ms failures<={self.limits.max_fail_ratio:.2%}"
        )


def build_plan(options: Any) -> Plan:
    shape = options.shape
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    users = int(options.shape_users or DEFAULT_USERS[shape])
    duration = float(options.shape_duration or DEFAULT_DURATION_S[shape])
    if users < 1:
        raise ValueError("--shape-users must be at least 1")
    if shape != "step" and not 0 < duration <= MAX_DURATION_S:
        raise ValueError(f"--shape-duration must be between 1 and {MAX_DURATION_S} seconds")
    limits = Limits(p95_ms=float(options.p95_ms), max_fail_ratio=float(options.max_fail_ratio))
    if shape == "smoke":
        return Smoke(users, duration)
    if shape == "soak":
        return Soak(users, duration)
    if shape == "spike":
        return Spike(users, duration)
    steps = int(options.max_steps)
    step_seconds = float(options.step_seconds)
    if steps < 1 or step_seconds < 2 or steps * step_seconds > MAX_DURATION_S:
        raise ValueError("--max-steps >= 1, --step-seconds >= 2, and their product within the run-time bound")
    return Step(users, step_seconds, steps, limits)


class TallyShape(LoadTestShape):
    """The one shape Locust sees; the plan comes from the parsed command line / environment."""

    plan: Plan | None = None

    def tick(self) -> Tick:
        if self.runner is None:
            return None
        if self.plan is None:
            self.plan = build_plan(self.runner.environment.parsed_options)
        # LoadTestShape.get_run_time (inherited from Locust) has no annotations.
        return self.plan.tick(self.get_run_time(), self.runner.stats)  # type: ignore[no-untyped-call]
