"""Which users a canary serves: a stable share of users, by a hash of the user id.

The bucket is blake2b of ``"watchnext-canary:<user_id>"`` read as a fraction in [0, 1): the same
on every worker, after every restart and in every language, and independent of the murmur2 hash
that assigns users to partitions (so a canary share is spread over all partitions and workers
rather than being whole partitions). Raising the share only adds users: a user in the canary at
10 % stays in it at 20 %.
"""

from __future__ import annotations

import hashlib

_SCALE = float(1 << 64)


def canary_bucket(user_id: int) -> float:
    """The user's fixed position in [0, 1)."""
    digest = hashlib.blake2b(f"watchnext-canary:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def in_canary(user_id: int, share: float) -> bool:
    """True when the canary serves ``user_id`` at ``share`` (0: nobody, 1: everybody)."""
    return share > 0.0 and canary_bucket(user_id) < share
