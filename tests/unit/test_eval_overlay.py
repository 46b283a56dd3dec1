"""The freshness-overlay evaluation's protocol on a small world: the snapshot alone cannot
retrieve what was uploaded after it, the overlay does, and the fold-in is chosen on validation."""

from __future__ import annotations

from model.datasets.synthetic import synthetic_timelines
from model.synth import SynthConfig, World
from watchnext.eval_overlay import GRID, run_overlay_eval

SMALL = SynthConfig(seed=5, n_users=600, n_items=400, n_topics=8, sessions_per_user=10.0)


def test_new_uploads_are_found_only_with_the_overlay() -> None:
    timelines, context = synthetic_timelines(SMALL)
    result = run_overlay_eval(World(SMALL), timelines, context, epochs=2)
    rows = result["rows"]
    assert result["users"] > 10 and result["new_items"] > 10
    without = rows["without overlay"]
    assert without["new_item_recall"] == 0.0 and without["overlay_items"] == 0
    shipped = rows["overlay (watchers + channel prior)"]
    assert shipped["overlay_items"] == result["new_items"]  # every new upload has a channel
    assert (
        rows["overlay, first watchers only"]["overlay_items"]
        == (result["new_items_watched_before_q"])
    )
    assert shipped["new_item_recall"] > 0.1
    assert result["new_item_recall_with_overlay"] == shipped["new_item_recall"]
    assert result["chosen_on_validation"] in [vars(f) for f in GRID]
    assert len(result["validation"]["sweep"]) == len(GRID)
