from __future__ import annotations

import pytest

from app.identity import normalise_address, visitor_key


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4 ", "1.2.3.4"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("::FFFF:102:304", "1.2.3.4"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("fe80::1%" + "x" * 40, "fe80::1"),
        ("[2001:db8::1]:8443", "2001:db8::1"),
        ("1.2.3.4:5678", "1.2.3.4"),
    ],
)
def test_equivalent_spellings_become_one_address(raw: str, expected: str) -> None:
    assert normalise_address(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [None, "", "n/a", "unknown", "1.2.3.4, 5.6.7.8", "999.1.1.1", "1.2.3", "[::1", "<script>", "a" * 200]
    + ["fe80::1%" + "x" * 80],
)
def test_non_addresses_are_rejected(raw: str | None) -> None:
    assert normalise_address(raw) is None


def test_visitor_key_is_keyed_and_stable() -> None:
    first = visitor_key(b"k" * 32, "1.2.3.4")
    assert first == visitor_key(b"k" * 32, "1.2.3.4")
    assert len(first) == 32
    assert first != visitor_key(b"j" * 32, "1.2.3.4")
    assert b"1.2.3.4" not in first
