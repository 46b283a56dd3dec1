"""The promotion gate's decisions: comparable hold-out only, undecided on too few users, the
ranker on its own validation loss."""

from __future__ import annotations

import math

import pytest

from model.promotion_gate import holdout, judge_candidates, judge_ranker


def test_hold_out_watches_of_new_items_are_not_compared_but_reported() -> None:
    targets = {1: {10, 900}, 2: {901}, 3: {11, 12}}
    window = holdout(targets, known_new={10, 11, 12, 900, 901}, known_current={10, 11, 12})
    assert window.comparable == {1: {10}, 3: {11, 12}}  # user 2 watched only a new upload
    cov = window.coverage()
    assert cov["holdout_watches"] == 5
    assert cov["comparable_users"] == 2 and cov["comparable_watches"] == 3
    assert cov["new_item_share_current"] == 0.4  # 900 and 901: the served model has no vector
    assert cov["new_item_share_new"] == 0.0


def test_without_a_served_model_everything_the_new_one_knows_is_comparable() -> None:
    window = holdout({1: {1, 2}, 2: {3}}, known_new={1, 2}, known_current=None)
    assert window.comparable == {1: {1, 2}}
    assert window.coverage()["new_item_share_new"] == pytest.approx(1 / 3, abs=1e-4)


def test_the_demo_that_promoted_on_zero_against_zero_is_undecided() -> None:
    """Issue 17: 31 hold-out users who watched only new uploads; both recalls were 0.0."""
    targets = {u: {20001, 20002, 20003} for u in range(31)}
    window = holdout(targets, known_new={1, 2, 20001, 20002, 20003}, known_current={1, 2})
    assert window.comparable == {}
    verdict = judge_candidates({}, {}, tolerance=0.01, min_users=20)
    assert verdict.decision == "undecided" and verdict.metrics["compared_users"] == 0


def test_too_few_comparable_users_cannot_decide_either_way() -> None:
    new = {u: 1.0 for u in range(19)}
    cur = {u: 0.0 for u in range(19)}
    assert judge_candidates(new, cur, 0.01, min_users=20).decision == "undecided"
    assert judge_candidates(cur, new, 0.01, min_users=20).decision == "undecided"
    assert judge_candidates(new, cur, 0.01, min_users=19).decision == "promote"


def test_only_a_measurably_worse_model_is_rejected() -> None:
    users = range(40)
    cur = {u: 0.5 for u in users}
    # worse by 0.03 on average but noisy (half the users lose 0.3, half gain 0.24): a tie
    noisy = {u: 0.2 if u % 2 else 0.74 for u in users}
    tie = judge_candidates(noisy, cur, tolerance=0.01, min_users=20)
    assert tie.metrics["recall_diff"] == pytest.approx(-0.03)
    lo, hi = tie.metrics["recall_diff_ci95"]
    assert lo < -0.03 < -0.01 < hi
    assert tie.decision == "promote"
    # worse by 0.1 for every user: the interval is far below the tolerance
    bad = judge_candidates({u: 0.4 for u in users}, cur, tolerance=0.01, min_users=20)
    assert bad.decision == "reject" and bad.metrics["current_recall"] == 0.5
    assert bad.metrics["recall_diff_ci95"] == [-0.1, -0.1]
    # worse by 0.005 for every user, within the tolerance of 0.01: promoted
    close = judge_candidates({u: 0.495 for u in users}, cur, tolerance=0.01, min_users=20)
    assert close.decision == "promote"
    # only users both were scored on are paired
    partial = judge_candidates({**cur, 99: 0.0}, cur, tolerance=0.0, min_users=40)
    assert partial.metrics["compared_users"] == 40 and partial.decision == "promote"


def test_the_ranker_ships_only_when_its_validation_loss_is_not_worse() -> None:
    assert judge_ranker(0.30, None, 0.02)[0]  # nothing served: the new one ships
    assert judge_ranker(0.305, 0.30, 0.02)[0]  # within 2 % of the served loss
    ship, figures = judge_ranker(0.32, 0.30, 0.02)
    assert not ship
    assert figures == {"ranker_val_loss_new": 0.32, "ranker_val_loss_current": 0.3}
    assert not judge_ranker(math.nan, 0.30, 0.02)[0]  # no pairs to judge on: keep the served
