"""Seeds derived from the job seed and a purpose, stable across processes and machines."""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, *parts) -> int:
    """A 63-bit seed for (seed, *parts): same inputs, same seed, in any process."""
    text = "/".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
