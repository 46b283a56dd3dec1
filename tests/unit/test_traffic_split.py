"""The canary's users: a stable share by user-id hash, spread over every partition."""

from __future__ import annotations

import hashlib

from serving.traffic_split import canary_bucket, in_canary
from stream.routing import key_partition


def test_the_bucket_is_the_documented_hash() -> None:
    """blake2b("watchnext-canary:<id>", 8 bytes), big-endian, as a fraction: any client in any
    language can tell which users a canary serves."""
    for user in (0, 1, 42, 10**12):
        digest = hashlib.blake2b(f"watchnext-canary:{user}".encode(), digest_size=8).digest()
        assert canary_bucket(user) == int.from_bytes(digest, "big") / 2**64
        assert in_canary(user, 0.5) == (canary_bucket(user) < 0.5)


def test_share_bounds_and_growth_only_adds_users() -> None:
    users = range(20_000)
    assert not any(in_canary(u, 0.0) for u in users)
    assert all(in_canary(u, 1.0) for u in users)
    ten = {u for u in users if in_canary(u, 0.1)}
    twenty = {u for u in users if in_canary(u, 0.2)}
    assert ten <= twenty
    assert abs(len(ten) / 20_000 - 0.1) < 0.01 and abs(len(twenty) / 20_000 - 0.2) < 0.01


def test_the_canary_is_spread_over_all_partitions() -> None:
    per_partition: dict[int, list[bool]] = {}
    for u in range(20_000):
        per_partition.setdefault(key_partition(str(u).encode(), 4), []).append(in_canary(u, 0.3))
    for flags in per_partition.values():
        assert abs(sum(flags) / len(flags) - 0.3) < 0.03
