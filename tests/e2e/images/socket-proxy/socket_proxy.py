#!/usr/bin/env python3
"""Stand-in for wollomatic/socket-proxy: a filtering HTTP proxy in front of the Docker socket.

Takes the flags compose/edge.yaml passes. A request is forwarded only when the client's address is one of
the -allowfrom hosts (resolved on every connection) and -allow<METHOD> has a regex that matches the whole
path; anything else gets 403 and never reaches the engine. One request per connection (the engine is told
`Connection: close`), so a kept-alive connection cannot slip a second, unchecked request through.
-allowhealthcheck serves GET /health on 55555. -watchdoginterval/-stoponwatchdog/-shutdowngracetime are
accepted and not implemented.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import socket
import sys
from urllib.parse import urlsplit

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "TRACE", "OPTIONS")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="socket-proxy", prefix_chars="-")
    p.add_argument("-loglevel", default="INFO")
    p.add_argument("-listenip", default="127.0.0.1")
    p.add_argument("-proxyport", type=int, default=2375)
    p.add_argument("-socketpath", default="/var/run/docker.sock")
    p.add_argument("-allowfrom", default="127.0.0.1/32")
    p.add_argument("-allowhealthcheck", action="store_true")
    p.add_argument("-watchdoginterval", type=int, default=0)
    p.add_argument("-stoponwatchdog", action="store_true")
    p.add_argument("-shutdowngracetime", type=int, default=10)
    for method in METHODS:
        p.add_argument(f"-allow{method}", dest=f"allow_{method}", default=None)
    return p.parse_args()


ARGS = parse()
ALLOW = {m: re.compile(getattr(ARGS, f"allow_{m}")) for m in METHODS if getattr(ARGS, f"allow_{m}")}


def log(level: str, msg: str) -> None:
    if level != "DEBUG" or ARGS.loglevel.upper() == "DEBUG":
        print(f'level={level} msg="{msg}"', flush=True)


def allowed_addresses() -> set[str]:
    addresses: set[str] = set()
    for host in ARGS.allowfrom.split(","):
        host = host.strip().split("/")[0]
        try:
            addresses.update(info[4][0] for info in socket.getaddrinfo(host, None))
        except OSError:
            continue  # a service that is not running (cadvisor) resolves to nothing
    return addresses


async def answer(writer: asyncio.StreamWriter, status: str) -> None:
    writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    writer.close()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")[0]
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        writer.close()
        return
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = (lines[0].split(" ") + ["", ""])[:3]
    path = urlsplit(target).path
    if peer not in await asyncio.to_thread(allowed_addresses):
        log("WARN", f"blocked client {peer}")
        await answer(writer, "403 Forbidden")
        return
    rule = ALLOW.get(method)
    if rule is None or not rule.fullmatch(path):
        log("WARN", f"blocked {method} {path}")
        await answer(writer, "403 Forbidden")
        return
    headers = [h for h in lines[1:] if h and h.split(":", 1)[0].strip().lower() not in ("connection", "keep-alive")]
    upstream_head = "\r\n".join([lines[0], *headers, "Connection: close", "", ""]).encode("latin-1")
    try:
        up_reader, up_writer = await asyncio.open_unix_connection(ARGS.socketpath)
    except OSError as exc:
        log("ERROR", f"docker socket: {exc}")
        await answer(writer, "502 Bad Gateway")
        return
    log("DEBUG", f"allowed {method} {path}")
    up_writer.write(upstream_head)
    await up_writer.drain()
    try:
        while chunk := await up_reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        up_writer.close()
        writer.close()


async def health(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.readuntil(b"\r\n\r\n")
        _r, w = await asyncio.open_unix_connection(ARGS.socketpath)
        w.close()
        await answer(writer, "200 OK")
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        await answer(writer, "503 Service Unavailable")


async def main() -> None:
    servers = [await asyncio.start_server(handle, ARGS.listenip, ARGS.proxyport)]
    if ARGS.allowhealthcheck:
        servers.append(await asyncio.start_server(health, "127.0.0.1", 55555))
    log("INFO", f"listening on {ARGS.listenip}:{ARGS.proxyport}, allowed: {sorted(ALLOW)}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()
    log("INFO", "stopped")


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
