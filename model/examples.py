"""Training examples for candidate generation: rollback next-watch labels (paper §3.4).

For every second of a user's visible timeline after the first, each item watched in that second
is a label, and the input is built only from seconds strictly before it: no feature of an
example can see its label's second or later. Each epoch draws a fixed number of examples per
user (sampled over the user's labels), so heavy users do not dominate the loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from model.features import Vocab, pad_bags, powers
from model.protocol import UserTimeline

HISTORY_LEN = 50
CATEGORICAL = ("gender", "occupation", "region")


@dataclass
class UserContext:
    """Context vocabularies and per-user raw demographics (age in years, categorical values)."""

    gender: Vocab
    occupation: Vocab
    region: Vocab
    users: Mapping[int, tuple[float | None, str | None, str | None, str | None]]

    def cats(self, user: int) -> list[int]:
        _age, gender, occ, region = self.users.get(user, (None, None, None, None))
        return [self.gender.row(gender), self.occupation.row(occ), self.region.row(region)]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Dense per-user lookups ([U+1, 3] category rows, [U+1] normalized age), cached."""
        cached = getattr(self, "_arrays", None)
        if cached is None:
            size = max(self.users, default=0) + 1
            cats = np.zeros((size, 3), dtype=np.int64)
            ages = np.zeros(size, dtype=np.float64)
            for u in self.users:
                cats[u] = self.cats(u)
                ages[u] = self.age(u)
            cached = self._arrays = (cats, ages)
        return cached

    def age(self, user: int) -> float:
        age = self.users.get(user, (None,))[0]
        return 0.0 if age is None else min(age / 100.0, 1.0)


@dataclass
class ExampleTable:
    """All candidate examples of a set of timelines, as flat arrays (one row per label)."""

    users: np.ndarray  # [E] user ids
    labels: np.ndarray  # [E] item rows
    label_ts: np.ndarray  # [E] label second
    history: np.ndarray  # [E, L] item rows of the seconds before the label, PAD-padded
    history_max_ts: np.ndarray  # [E] newest second used in the history (for the leakage test)


def build_examples(tl: dict[int, UserTimeline], items: Vocab, min_history: int = 1) -> ExampleTable:
    """Every (second j ≥ min_history, item in second j) of every user, with its rollback input."""
    users, labels, label_ts, bags, hmax = [], [], [], [], []
    for user in sorted(tl):
        t = tl[user]
        for j in range(min_history, len(t.seconds)):
            before = t.before(j)
            bag = items.rows(before.bag(HISTORY_LEN))
            for item in t.items[j]:
                row = items.row(item)
                if row == 0:
                    continue
                users.append(user)
                labels.append(row)
                label_ts.append(t.seconds[j])
                bags.append(bag)
                hmax.append(before.seconds[-1])
    return ExampleTable(
        np.asarray(users, dtype=np.int64),
        np.asarray(labels, dtype=np.int64),
        np.asarray(label_ts, dtype=np.float64),
        pad_bags(bags, HISTORY_LEN),
        np.asarray(hmax, dtype=np.float64),
    )


def sample_per_user(table: ExampleTable, per_user: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``per_user`` examples per user, uniformly over that user's labels."""
    order = np.argsort(table.users, kind="stable")
    bounds = np.flatnonzero(np.diff(table.users[order])) + 1
    picks = []
    for chunk in np.split(order, bounds):
        if len(chunk) > per_user:
            chunk = rng.choice(chunk, size=per_user, replace=False)
        picks.append(chunk)
    out = np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)
    rng.shuffle(out)
    return out


def continuous(ages: np.ndarray, example_age: np.ndarray) -> np.ndarray:
    """[B, 6]: user age and example age, each with its square and square root."""
    return np.concatenate([powers(ages[:, None]), powers(example_age[:, None])], axis=1).astype(
        np.float32
    )
