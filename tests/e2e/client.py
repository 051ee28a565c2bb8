"""HTTPS client of the e2e suite: runs inside client containers on the stack's edge network (each one is a
distinct visitor address) and on the host. Standard library only: the client image is the python stand-in.

    python client.py --host traefik --port 443 --count 50 [--path /] [--header 'X-Forwarded-For: 1.2.3.4']
prints one JSON object: statuses (in order), bodies of the last response, error count.
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import threading

DOMAIN = "localhost"


def context() -> ssl.SSLContext:
    # Traefik's default certificate is self-signed: the suite checks the protocol, not the chain.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def get(
    host: str, port: int, path: str = "/", headers: dict[str, str] | None = None, timeout: float = 15
) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPSConnection(host, port, context=context(), timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": DOMAIN, "User-Agent": "tally-e2e", **(headers or {})})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode("utf-8", "replace")
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="traefik")
    parser.add_argument("--port", type=int, default=443)
    parser.add_argument("--path", default="/")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--keep-alive", action="store_true", help="one connection per worker, reused")
    parser.add_argument("--until-status", type=int, help="stop once a response has this status")
    args = parser.parse_args()
    headers = {"Host": DOMAIN, "User-Agent": "tally-e2e", **dict(h.split(": ", 1) for h in args.header)}
    tickets = iter(range(args.count))
    lock = threading.Lock()
    done = threading.Event()
    results: dict[int, tuple[int, str]] = {}

    def worker() -> None:
        conn: http.client.HTTPSConnection | None = None
        while not done.is_set():
            with lock:
                number = next(tickets, None)
            if number is None:
                break
            try:
                if conn is None:
                    conn = http.client.HTTPSConnection(args.host, args.port, context=context(), timeout=15)
                conn.request("GET", args.path, headers=headers)
                response = conn.getresponse()
                result = response.status, response.read().decode("utf-8", "replace")
                if not args.keep_alive or response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                result = -1, repr(exc)
                if conn is not None:
                    conn.close()
                conn = None
            results[number] = result
            if result[0] == args.until_status:
                done.set()
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ordered = [results[n] for n in sorted(results)]
    print(json.dumps({"statuses": [s for s, _ in ordered], "last_body": ordered[-1][1] if ordered else ""}))


if __name__ == "__main__":
    main()
