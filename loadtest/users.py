"""Who the load test pretends to be.

Visitors are told apart by their client address. A load generator has one address, so the visitor
classes put the address they play in ``X-Forwarded-For``. The target only believes that header when
it is told to trust the load generator as a proxy (``TRUSTED_PROXY_HOPS`` on a bare gunicorn, or
Traefik's ``forwardedHeaders.trustedIPs`` plus one more hop in the stack). Otherwise the header is
ignored and every visitor collapses into the load generator's own address: the run still works, but
the "new visitor" path is not exercised (``locustfile`` detects this and says so in the summary).

FastHttpUser (geventhttpclient) rather than HttpUser: several times fewer CPU cycles per request,
which matters when the generator shares the two cores with the system under test.
"""

from __future__ import annotations

import ipaddress
import os
import random
from collections.abc import Callable

from locust import FastHttpUser, between, constant, constant_throughput, task
from locust.contrib.fasthttp import ResponseContextManager

TRUE_VALUES = ("1", "true", "yes", "on")


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in TRUE_VALUES


def random_public_ipv4() -> str:
    """A random global unicast IPv4 address: 2^32 space, so collisions are rare enough to count as new."""
    while True:
        address = ipaddress.IPv4Address(random.getrandbits(32))
        if address.is_global:
            return str(address)


def pacing() -> Callable[..., float]:
    """Think time between tasks of one user.

    ``LOADTEST_USER_RPS`` > 0 makes each user a constant-rate source (users x rate = offered load),
    which is what a capacity or a "p99 at 80 % load" measurement needs; ``max`` sends the next
    request as soon as the previous answer arrives (users = concurrency). Default: a human-ish 0.5-2 s.
    """
    setting = os.environ.get("LOADTEST_USER_RPS", "").strip().lower()
    if setting == "max":
        return constant(0)
    rate = float(setting or 0)
    return constant_throughput(rate) if rate > 0 else between(0.5, 2.0)


class TallyUser(FastHttpUser):
    abstract = True
    wait_time = pacing()
    # FastHttpUser skips certificate checks by default; we verify unless the operator opts out,
    # because a load test that silently trusts any certificate can be pointed at an impostor.
    insecure = env_flag("LOADTEST_INSECURE")
    # A connection per user, kept alive, like a browser tab.
    concurrency = 1
    network_timeout = 30.0
    connection_timeout = 10.0


class ReturningVisitor(TallyUser):
    """One person reloading the page: the same address for the whole life of the simulated user."""

    weight = 6

    def on_start(self) -> None:
        self.address = random_public_ipv4()

    @task
    def visit(self) -> None:
        with self.client.get(
            "/", headers={"X-Forwarded-For": self.address}, name="/ (returning)", catch_response=True
        ) as response:
            _expect_page(response)


class NewVisitor(TallyUser):
    """Someone never seen before on every request: exercises the insert path and the visitor counters."""

    weight = 2

    @task
    def visit(self) -> None:
        with self.client.get(
            "/", headers={"X-Forwarded-For": random_public_ipv4()}, name="/ (new)", catch_response=True
        ) as response:
            _expect_page(response)


class StatsReader(TallyUser):
    weight = 1

    @task
    def stats(self) -> None:
        with self.client.get("/api/stats", name="/api/stats", catch_response=True) as response:
            _expect_json_with(response, "total_visitors")


class VersionChecker(TallyUser):
    weight = 1

    @task
    def version(self) -> None:
        with self.client.get("/version", name="/version", catch_response=True) as response:
            _expect_json_with(response, "version")


def _expect_json_with(response: ResponseContextManager, key: str) -> None:
    if response.status_code != 200:
        _fail_status(response)
        return
    try:
        body = response.json()
    except ValueError:
        response.failure("body is not JSON")
        return
    if not isinstance(body, dict) or key not in body:
        response.failure(f"no {key} in the body")


def _fail_status(response: ResponseContextManager) -> None:
    # Status 0 means no HTTP answer at all (refused, reset, TLS verification): say why, not "status 0".
    error = getattr(response, "error", None)
    response.failure(repr(error) if response.status_code == 0 and error else f"status {response.status_code}")


def _expect_page(response: ResponseContextManager) -> None:
    # A 200 that is not the counting page (an error page, a proxy's placeholder) must not pass.
    if response.status_code != 200:
        _fail_status(response)
    elif "You have visited this page" not in (response.text or ""):
        response.failure("200 without the visit line")


ALL_USERS = (ReturningVisitor, NewVisitor, StatsReader, VersionChecker)
