"""Training examples for candidate generation: rollback next-watch labels (paper §3.4).

For every second of a user's visible timeline after the first, each item watched in that second
is a label, and the input is built only from seconds strictly before it: no feature of an
example can see its label's second or later. Each epoch draws a fixed number of examples per
user (sampled over the user's labels), so heavy users do not dominate the loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.features import Vocab, pad_bags, powers
from model.protocol import UserTimeline

HISTORY_LEN = 50
# Sorted: ContextArch embeds the category columns in sorted-name order.
CATEGORICAL = ("device", "gender", "occupation", "region")


@dataclass
class UserContext:
    """Context vocabularies and per-user raw attributes.

    ``users[u]`` maps ``"age"`` (years) and each name in :data:`CATEGORICAL` to a raw value;
    missing or unknown values encode as row 0 (zero embedding) and age 0.
    """

    vocabs: dict[str, Vocab]
    users: Mapping[int, Mapping[str, Any]]

    @classmethod
    def build(cls, users: Mapping[int, Mapping[str, Any]]) -> UserContext:
        """Vocabularies from the users' own attribute values (no interactions involved)."""
        vocabs = {
            n: Vocab.build(a.get(n) for a in users.values() if a.get(n) is not None)
            for n in CATEGORICAL
        }
        return cls(vocabs, users)

    def sizes(self) -> dict[str, int]:
        return {n: len(self.vocabs[n]) for n in CATEGORICAL}

    def encode(self, attrs: Mapping[str, Any] | None) -> tuple[list[int], float]:
        """(category rows in CATEGORICAL order, normalized age) of one user's attributes."""
        attrs = attrs or {}
        age = attrs.get("age")
        return (
            [self.vocabs[n].row(attrs.get(n)) for n in CATEGORICAL],
            0.0 if age is None else min(float(age) / 100.0, 1.0),
        )

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Dense per-user lookups ([U+1, C] category rows, [U+1] normalized age), cached."""
        cached = getattr(self, "_arrays", None)
        if cached is None:
            size = max(self.users, default=0) + 1
            cats = np.zeros((size, len(CATEGORICAL)), dtype=np.int64)
            ages = np.zeros(size, dtype=np.float64)
            for u, attrs in self.users.items():
                row, age = self.encode(attrs)
                cats[u] = row
                ages[u] = age
            cached = self._arrays = (cats, ages)
        return cached


@dataclass
class ExampleTable:
    """All candidate examples of a set of timelines, as flat arrays (one row per label)."""

    users: np.ndarray  # [E] user ids
    labels: np.ndarray  # [E] item rows
    label_ts: np.ndarray  # [E] label second
    history: np.ndarray  # [E, L] item rows of the seconds before the label, PAD-padded
    history_max_ts: np.ndarray  # [E] newest second used in the history (for the leakage test)
    history_rank: np.ndarray  # [E, L] recency rank of each history slot (0 = newest second)
    search: np.ndarray  # [E, L] token rows of the newest searches strictly before the label


def build_examples(
    tl: dict[int, UserTimeline],
    items: Vocab,
    tokens: Vocab | None = None,
    min_history: int = 1,
) -> ExampleTable:
    """Every (second j ≥ min_history, item in second j) of every user, with its rollback input.

    Search tokens come only from searches strictly before the label's second.
    """
    tokens = tokens or Vocab()
    users, labels, label_ts, bags, ranks, hmax, searches = [], [], [], [], [], [], []
    for user in sorted(tl):
        t = tl[user]
        for j in range(min_history, len(t.seconds)):
            before = t.before(j)
            recent, rank = before.recent(HISTORY_LEN)
            bag = items.rows(recent)
            search = tokens.rows(t.tokens_before(t.seconds[j], HISTORY_LEN))
            for item in t.items[j]:
                row = items.row(item)
                if row == 0:
                    continue
                users.append(user)
                labels.append(row)
                label_ts.append(t.seconds[j])
                bags.append(bag)
                ranks.append(rank)
                searches.append(search)
                hmax.append(before.seconds[-1])
    return ExampleTable(
        np.asarray(users, dtype=np.int64),
        np.asarray(labels, dtype=np.int64),
        np.asarray(label_ts, dtype=np.float64),
        pad_bags(bags, HISTORY_LEN),
        np.asarray(hmax, dtype=np.float64),
        pad_bags(ranks, HISTORY_LEN),
        pad_bags(searches, HISTORY_LEN),
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
