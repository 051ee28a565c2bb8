"""Who is visiting: the normalised client address, turned into a keyed, irreversible visitor id.

Raw addresses never leave this module: the database only sees HMAC-SHA256(secret, address).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

VISITOR_KEY_BYTES = 32
# Longest textual IPv6 with an embedded IPv4 tail, plus brackets and a port; anything longer is junk.
MAX_ADDRESS_LENGTH = 64


class BadClientAddress(Exception):
    """The address our trusted proxies handed us is not an IP address."""


def normalise_address(raw: str | None) -> str | None:
    """Canonical text of an IP address, or None when ``raw`` is not one.

    One person must map to one string: IPv4-mapped IPv6 becomes IPv4, IPv6 is compressed and
    lower-cased, a zone id (``fe80::1%eth0``) and a port (``1.2.3.4:80``, ``[::1]:80``) are dropped.
    """
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
