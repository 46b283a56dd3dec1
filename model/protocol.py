"""The ``ml100k-lastsecond`` offline protocol (``../shared/docs/evaluation.md``).

A user's test targets are all items rated in the user's last timestamp (second); the history is
everything strictly before that second. Validation applies the same split once more to the
history. No order among same-second ratings is used anywhere: a user's activity is a sequence of
*seconds*, each a set of items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.datasets.movielens import MovieLens


@dataclass(frozen=True)
class UserTimeline:
    """One user's activity as (second, items rated in that second), oldest first."""

    user: int
    seconds: tuple[float, ...]
    items: tuple[tuple[int, ...], ...]
    # (second, tokens) of the user's searches, oldest first; MovieLens has none.
    searches: tuple[tuple[float, tuple[str, ...]], ...] = ()

    def before(self, k: int) -> UserTimeline:
        """The timeline restricted to its first ``k`` seconds (and the searches before the
        ``k``-th second, so a split never lets a search from the target's second through)."""
        cut = self.seconds[k] if k < len(self.seconds) else float("inf")
        return UserTimeline(
            self.user,
            self.seconds[:k],
            self.items[:k],
            tuple(s for s in self.searches if s[0] < cut),
        )

    def tokens_before(self, second: float, max_len: int) -> list[str]:
        """The newest ≤ ``max_len`` search tokens from searches strictly before ``second``."""
        out: list[str] = []
        for ts, toks in reversed(self.searches):
            if ts >= second:
                continue
            out.extend(toks)
            if len(out) >= max_len:
                break
        return out[:max_len]

    def bag(self, max_len: int, rng: np.random.Generator | None = None) -> list[int]:
        """The most recent items, whole seconds at a time, at most ``max_len``."""
        return self.recent(max_len, rng)[0]

    def recent(
        self, max_len: int, rng: np.random.Generator | None = None
    ) -> tuple[list[int], list[int]]:
        """(items, recency ranks): the newest items, whole seconds at a time, at most ``max_len``.

        A second is added only whole; if the newest second alone holds more than ``max_len``
        items, a random subset is taken (seeded), never a file-order prefix. An item's rank is
        how many seconds of the timeline are newer than its own (0 = the newest second), so
        items of one second share a rank.
        """
        out: list[int] = []
        ranks: list[int] = []
        for rank, items in enumerate(reversed(self.items)):
            if len(out) + len(items) <= max_len:
                out.extend(items)
                ranks.extend([rank] * len(items))
            else:
                if not out:
                    pick = (rng or np.random.default_rng(0)).choice(
                        len(items), size=max_len, replace=False
                    )
                    out.extend(items[i] for i in sorted(pick))
                    ranks.extend([rank] * max_len)
                break
        return out, ranks


@dataclass(frozen=True)
class Split:
    """Per user: the visible timeline and the target items of the following second."""

    timelines: dict[int, UserTimeline]  # what the model may see
    targets: dict[int, frozenset[int]]  # the next second's items
    target_ts: dict[int, float]


def timelines(data: MovieLens) -> dict[int, UserTimeline]:
    """Group ratings into per-user, per-second item sets."""
    order = np.lexsort((data.items_col, data.timestamps, data.users_col))
    u, it, ts = data.users_col[order], data.items_col[order], data.timestamps[order]
    out: dict[int, UserTimeline] = {}
    bounds = np.flatnonzero(np.diff(u)) + 1
    for chunk in np.split(np.arange(len(u)), bounds):
        if len(chunk) == 0:
            continue
        user = int(u[chunk[0]])
        secs, groups = [], []
        for sec_chunk in np.split(chunk, np.flatnonzero(np.diff(ts[chunk])) + 1):
            secs.append(float(ts[sec_chunk[0]]))
            groups.append(tuple(sorted(int(x) for x in it[sec_chunk])))
        out[user] = UserTimeline(user, tuple(secs), tuple(groups))
    return out


def last_second_split(tl: dict[int, UserTimeline]) -> Split:
    """Targets = the last second's items; visible = all earlier seconds (users with ≥ 2 seconds)."""
    vis, tgt, tts = {}, {}, {}
    for user, t in tl.items():
        if len(t.seconds) < 2:
            continue
        vis[user] = t.before(len(t.seconds) - 1)
        tgt[user] = frozenset(t.items[-1])
        tts[user] = t.seconds[-1]
    return Split(vis, tgt, tts)


def split_test_validation(data: MovieLens) -> tuple[Split, Split]:
    """(test split, validation split). Validation's timelines end one second earlier still."""
    test = last_second_split(timelines(data))
    val = last_second_split(test.timelines)
    return test, val
