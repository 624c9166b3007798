"""Time-ordered public ids: prefix, then 48 bits of milliseconds and 80 random bits in base32."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"   # Crockford base32, lower case


def new_id(prefix: str) -> str:
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return f"{prefix}_{''.join(reversed(chars))}"


# Byte -> digit: 256 is a multiple of 32, so a random byte gives a uniform random digit.
_DIGIT_OF_BYTE = bytes(_ALPHABET.encode()[b % 32] for b in range(256))


def new_ids(prefix: str, count: int) -> list[str]:
    """`count` ids as new_id makes them, made together (a graph rebuild makes them by the
    million): the 48 bits of milliseconds are the top 10 digits and the 80 random bits the
    16 digits after them, drawn in one read of the system's random source."""
    millis = new_id("")[1:11]
    digits = os.urandom(16 * count).translate(_DIGIT_OF_BYTE).decode()
    return [f"{prefix}_{millis}{digits[i:i + 16]}" for i in range(0, 16 * count, 16)]
