"""Bad input at volume: forged, malformed and oversized requests written as raw bytes.

An HTTP library would refuse to send most of these (or repair them), so each request is built by
hand and sent on its own connection from a thread pool.

What "forgery" means here. Every request comes from one real client, 127.0.0.1. The app trusts
``TRUSTED_PROXY_HOPS=1`` proxy, as in compose:

* through the balancer (the production path), the balancer drops the client's X-Forwarded-For and
  appends the real peer, so no header a client sends can create a visitor: at most ONE visitor
  (127.0.0.1) may be added, whatever was forged;
* straight at gunicorn (what a client could do only if the app port were exposed, which compose
  does not), the client plays the trusted proxy, so the rightmost X-Forwarded-For entry is
  believed. The corpus only ever puts the canonical addresses below, in many spellings (IPv4-mapped,
  with ports, zone ids, upper case, duplicated headers), or garbage in that position. Forgery
  succeeds if any other visitor appears (a left-hand list entry, an underscore header, a Forwarded
  header, a spelling that escapes normalisation), so at most ``DIRECT_VISITOR_BOUND`` may be added.

Every answer must be a non-5xx status, in time; every visit page served must be exactly one count.
"""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

# The addresses a client may legitimately claim in the trusted position, and the peer itself.
CANONICAL = ("203.0.113.7", "2001:db8::1", "fe80::1", "198.51.100.9")
PEER = "127.0.0.1"
DIRECT_VISITOR_BOUND = len(CANONICAL) + 1
SPOOFED = "6.6.6.6"  # appears only where a correct app must NOT believe it

VALID_SPELLINGS = (
    "203.0.113.7",
    " 203.0.113.7 ",
    "::ffff:203.0.113.7",
    "::FFFF:203.0.113.7",
    "203.0.113.7:443",
    "[::ffff:203.0.113.7]:80",
    "2001:db8::1",
    "2001:DB8:0:0:0:0:0:1",
    "[2001:db8::1]:8443",
    "2001:0db8:0000::0001",
    "fe80::1%eth0",
    "fe80::1%25lo",
    "[fe80::1%eth0]:1",
    "198.51.100.9",
)
INVALID_SPELLINGS = (
    "unknown",
    "not-an-ip",
    "999.1.1.1",
    "203.0.113.7.1",
    "203.0.113",
    "::ffff:zzzz",
    "<script>alert(1)</script>",
    "' OR 1=1 --",
    "1.2.3.4/32",
    "[2001:db8::1",
    "2001:db8::1]",
    "a" * 200,
    "%00",
    "0x7f.0.0.1 junk",
    "1.2.3.4 5.6.7.8",
    "_",
)
VISIT_LINE = b"You have visited this page"
# Longer than Traefik's 10 s request read timeout (compose/edge.yaml): a request whose announced body never
# comes is answered when Traefik gives up reading it, and that answer is what the drill judges.
CLIENT_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Case:
    tag: str
    data: bytes
    invalid_xff: bool = False  # direct to gunicorn this must never be a visit page


@dataclass(frozen=True)
class Outcome:
    tag: str
    status: int  # 0: closed without an answer, -1: no answer within the timeout
    visit_page: bool
    invalid_xff: bool


def tls_context(*, verify: bool) -> ssl.SSLContext:
    """TLS for the corpus; unverified for a stack on its self-signed default certificate."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


# The one case Traefik answers with its own 500 before the app sees it: a body it cannot read (a bad chunk
# size; traefik/traefik#11087, docs/security.md "Known gaps"). Reported, nothing is counted.
UNREADABLE_BODY_CASE = "te-bad-chunk"


def is_protocol_answer(error: str) -> bool:
    """A corpus case ("tag:status") whose 5xx is the answer HTTP/1.1 prescribes (RFC 9112 sections 2.6, 6.1)."""
    tag, _, status = error.rpartition(":")
    return (tag == "te-unknown" and status == "501") or (tag.startswith("version-") and status == "505")


@dataclass
class Summary:
    statuses: dict[str, int] = field(default_factory=dict)
    visit_pages: int = 0
    server_errors: list[str] = field(default_factory=list)
    timeouts: list[str] = field(default_factory=list)
    accepted_invalid_xff: list[str] = field(default_factory=list)

    @property
    def traefik_unreadable_body(self) -> list[str]:
        return [error for error in self.server_errors if error == f"{UNREADABLE_BODY_CASE}:500"]

    @property
    def protocol_answers(self) -> list[str]:
        return [error for error in self.server_errors if is_protocol_answer(error)]

    def server_errors_through_traefik(self) -> list[str]:
        """The 5xx answers that are failures behind Traefik: all but its unreadable-body 500 and the protocol
        answers HTTP prescribes."""
        excused = set(self.traefik_unreadable_body) | set(self.protocol_answers)
        return [error for error in self.server_errors if error not in excused]


def request(
    method: str = "GET",
    target: str = "/",
    version: str = "HTTP/1.1",
    headers: Iterable[tuple[str, str]] = (),
    *,
    host: str | None = "localhost",
    body: bytes = b"",
    eol: bytes = b"\r\n",
    close: bool = True,
) -> bytes:
    lines = [f"{method} {target} {version}".rstrip().encode("latin-1", "replace")]
    if host is not None:
        lines.append(f"Host: {host}".encode())
    lines += [f"{name}: {value}".encode("utf-8", "surrogateescape") for name, value in headers]
    if close:
        lines.append(b"Connection: close")
    return eol.join(lines) + eol + eol + body


def _xff(value: str) -> Callable[[random.Random], Case]:
    return lambda _rng: Case("xff", request(headers=[("X-Forwarded-For", value)]))


def _cases() -> list[Callable[[random.Random], Case]]:
    def valid_xff(rng: random.Random) -> Case:
        return Case("xff-valid", request(headers=[("X-Forwarded-For", rng.choice(VALID_SPELLINGS))]))

    def invalid_xff(rng: random.Random) -> Case:
        value = rng.choice(INVALID_SPELLINGS)
        return Case("xff-invalid", request(headers=[("X-Forwarded-For", value)]), invalid_xff=True)

    def spoofed_list(rng: random.Random) -> Case:
        last = rng.choice(VALID_SPELLINGS).strip()
        return Case("xff-spoofed-left", request(headers=[("X-Forwarded-For", f"{SPOOFED}, 10.0.0.1, {last}")]))

    def garbage_last(rng: random.Random) -> Case:
        value = f"{SPOOFED}, {rng.choice(INVALID_SPELLINGS)}"
        return Case("xff-garbage-last", request(headers=[("X-Forwarded-For", value)]), invalid_xff=True)

    def duplicate_headers(rng: random.Random) -> Case:
        headers = [("X-Forwarded-For", SPOOFED), ("X-Forwarded-For", rng.choice(VALID_SPELLINGS).strip())]
        return Case("xff-duplicate", request(headers=headers))

    def other_forwarding_headers(rng: random.Random) -> Case:
        name = rng.choice(["Forwarded", "X-Real-IP", "True-Client-IP", "CF-Connecting-IP", "X-Client-IP"])
        value = f"for={SPOOFED}" if name == "Forwarded" else SPOOFED
        return Case("other-forwarding-header", request(headers=[(name, value)]))

    def underscore_header(_rng: random.Random) -> Case:
        # CGI maps both X-Forwarded-For and X_Forwarded_For to HTTP_X_FORWARDED_FOR: a classic spoof.
        return Case("xff-underscore", request(headers=[("X_Forwarded_For", SPOOFED)]))

    def long_xff(rng: random.Random) -> Case:
        length = rng.choice([100, 1000, 8000, 9000, 20000])
        value = ", ".join([SPOOFED] * (length // 9)) + ", 203.0.113.7"
        return Case(f"xff-long-{length}", request(headers=[("X-Forwarded-For", value)]))

    def oversized_header(rng: random.Random) -> Case:
        size = rng.choice([8000, 8191, 9000, 65000])
        return Case(f"header-{size}b", request(headers=[("X-Junk", "j" * size)]))

    def many_headers(rng: random.Random) -> Case:
        count = rng.choice([49, 60, 200])
        return Case(f"headers-x{count}", request(headers=[(f"X-H{i}", "v") for i in range(count)]))

    def long_target(rng: random.Random) -> Case:
        size = rng.choice([2000, 4090, 5000, 70000])
        return Case(f"target-{size}b", request(target="/?" + "q" * size))

    def odd_path(rng: random.Random) -> Case:
        target = rng.choice(
            [
                "/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/%00", "/%ff%fe", "//", "///api/stats",
                "/index.php?x=<script>", "/static/../app/config.py", "/metrics", "/healthz/", "/version%00",
                "/%C3%BC", "/\u00fc", "*", "http://evil.example/", "/?" + "&".join(["a=1"] * 300), "/api/stats?%",
                "/.env", "/.git/config", "/wp-login.php", "/%", "/?x=%ZZ", "/readyz?" + "x" * 1000,
            ]
        )  # fmt: skip
        return Case("odd-path", request(target=target))

    def odd_method(rng: random.Random) -> Case:
        method = rng.choice(["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO", "get", "G ET", "HEAD"])
        body = b"x=1" if method in ("POST", "PUT", "PATCH") else b""
        headers = [("Content-Length", str(len(body)))] if body else []
        return Case(f"method-{method}", request(method=method, headers=headers, body=body))

    def bad_version(rng: random.Random) -> Case:
        version = rng.choice(["HTTP/1.1x", "HTTP/2.0", "HTTP/9.9", "", "HTTP/1.0", "http/1.1", "HTTP/1.1 extra"])
        return Case(f"version-{version or 'none'}", request(version=version))

    def bad_syntax(rng: random.Random) -> Case:
        variant = rng.randrange(8)
        if variant == 0:
            return Case("space-before-colon", b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For : 6.6.6.6\r\n\r\n")
        if variant == 1:
            return Case("no-colon", b"GET / HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n")
        if variant == 2:
            return Case("bare-lf", request(headers=[("X-Forwarded-For", "203.0.113.7")], eol=b"\n"))
        if variant == 3:
            return Case("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6,\r\n 203.0.113.7\r\n\r\n")
        if variant == 4:
            return Case("nul-in-value", b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.7\x00\r\n\r\n")
        if variant == 5:
            return Case(
                "latin1-value", b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: \xff\xfe\xfd\r\nConnection: close\r\n\r\n"
            )
        if variant == 6:
            return Case("bad-header-name", b"GET / HTTP/1.1\r\nHost: x\r\nX@Bad{}: 1\r\nConnection: close\r\n\r\n")
        return Case("cr-in-value", b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r203.0.113.7\r\n\r\n")

    def body_framing(rng: random.Random) -> Case:
        variant = rng.randrange(6)
        if variant == 0:
            return Case("cl-huge-no-body", request(headers=[("Content-Length", "100000")]))
        if variant == 1:
            return Case("cl-negative", request(headers=[("Content-Length", "-1")]))
        if variant == 2:
            return Case("cl-not-a-number", request(headers=[("Content-Length", "abc")]))
        if variant == 3:
            headers = [("Content-Length", "3"), ("Transfer-Encoding", "chunked")]
            return Case(
                "cl-and-te", request(method="POST", headers=headers, body=b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n")
            )
        if variant == 4:
            return Case(
                "te-bad-chunk", request(method="POST", headers=[("Transfer-Encoding", "chunked")], body=b"zz\r\n")
            )
        return Case("te-unknown", request(headers=[("Transfer-Encoding", "gzip, identity")]))

    def host_weirdness(rng: random.Random) -> Case:
        variant = rng.randrange(4)
        if variant == 0:
            return Case("no-host", request(host=None))
        if variant == 1:
            return Case("two-hosts", request(headers=[("Host", "evil.example")]))
        if variant == 2:
            return Case("long-host", request(host="h" * 5000))
        return Case("evil-host", request(host="evil.example:99999"))

    def junk(rng: random.Random) -> Case:
        return Case(
            "binary-junk", bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 16, 512, 4096]))) + b"\r\n\r\n"
        )

    def odd_headers(rng: random.Random) -> Case:
        headers = rng.choice(
            [
                [("X-Request-ID", "../../etc/passwd"), ("X-Forwarded-For", "203.0.113.7")],
                [("X-Request-ID", "a" * 500)],
                [("User-Agent", "kube-probe/1.29")],
                [("Cookie", "c=" + "x" * 7000)],
                [("X-Forwarded-Proto", "gopher"), ("X-Forwarded-Host", "evil.example")],
                [("Accept", "*/*;q=" + "9" * 500)],
                [("Range", "bytes=0-1,2-3," * 100)],
                [("Expect", "100-continue")],
            ]
        )
        return Case("odd-headers", request(headers=headers))

    return [
        valid_xff, valid_xff, invalid_xff, invalid_xff, spoofed_list, garbage_last, duplicate_headers,
        other_forwarding_headers, underscore_header, long_xff, oversized_header, many_headers, long_target,
        odd_path, odd_path, odd_method, bad_version, bad_syntax, bad_syntax, body_framing, host_weirdness, junk,
        odd_headers, _xff(""), _xff(","),
    ]  # fmt: skip


def corpus(count: int, seed: str = "") -> list[Case]:
    """``count`` requests drawn deterministically (per ``seed``) from every category above."""
    rng = random.Random(f"tally-bad-input-{seed}")
    makers = _cases()
    # Every category at least once, then a deterministic random mix.
    chosen = makers + [rng.choice(makers) for _ in range(max(count - len(makers), 0))]
    return [make(rng) for make in chosen[:count]]


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        # An interim answer (100 Continue to an Expect header) precedes the real one.
        if not head.startswith((b"HTTP/1.1 1", b"HTTP/1.0 1")):
            break
        data = body
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            length = int(value.strip())
    while length is None or len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def send(
    host: str, port: int, case: Case, tls: ssl.SSLContext | None = None, server_name: str | None = None
) -> Outcome:
    try:
        with socket.create_connection((host, port), timeout=CLIENT_TIMEOUT_S) as raw:
            sock = tls.wrap_socket(raw, server_hostname=server_name or host) if tls else raw
            # The server may refuse and close before the whole request is written; read its answer.
            with contextlib.suppress(OSError):
                sock.sendall(case.data)
            data = _read_response(sock)
    except TimeoutError:
        return Outcome(case.tag, -1, False, case.invalid_xff)
    except OSError:
        return Outcome(case.tag, 0, False, case.invalid_xff)
    status = 0
    first = data.split(b"\r\n", 1)[0].split()
    if len(first) >= 2 and first[0].startswith(b"HTTP/") and first[1].isdigit():
        status = int(first[1])
    return Outcome(case.tag, status, status == 200 and VISIT_LINE in data, case.invalid_xff)


def send_all(
    host: str,
    port: int,
    cases: list[Case],
    workers: int = 16,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
) -> list[Outcome]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda case: send(host, port, case, tls, server_name), cases))


def summarise(outcomes: list[Outcome]) -> Summary:
    summary = Summary()
    for outcome in outcomes:
        key = {0: "closed", -1: "timeout"}.get(outcome.status, str(outcome.status))
        summary.statuses[key] = summary.statuses.get(key, 0) + 1
        summary.visit_pages += outcome.visit_page
        if outcome.status >= 500:
            summary.server_errors.append(f"{outcome.tag}:{outcome.status}")
        if outcome.status == -1:
            summary.timeouts.append(outcome.tag)
        if outcome.invalid_xff and outcome.status == 200:
            summary.accepted_invalid_xff.append(outcome.tag)
    summary.statuses = dict(sorted(summary.statuses.items()))
    return summary
