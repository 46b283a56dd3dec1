"""Vector refresh off the ingest path: coalesced per user, in slices."""

from __future__ import annotations

import asyncio

from stream.refresher import MAX_TS_PER_USER, VectorRefresher
from stream.state import UserState


class _Serving:
    def __init__(self) -> None:
        self.calls: list[tuple[list[UserState], list[float]]] = []

    def refresh(self, states: list[UserState], stamps: list[float]) -> None:
        self.calls.append((list(states), list(stamps)))


def test_a_user_updated_twice_is_refreshed_once_with_the_newest_state() -> None:
    serving = _Serving()
    refresher = VectorRefresher(serving, slice_users=10)
    refresher.add([(UserState(user_id=1, n_watches=1), [10.0]), (UserState(user_id=2), [11.0])])
    refresher.add([(UserState(user_id=1, n_watches=2), [12.0])])
    assert len(refresher) == 2
    assert refresher.refresh_some() == 2
    ((states, stamps),) = serving.calls
    assert {s.user_id: s.n_watches for s in states} == {1: 2, 2: 0}
    assert sorted(stamps) == [10.0, 11.0, 12.0]  # one observation per event
    assert len(refresher) == 0 and refresher.refresh_some() == 0


def test_slices_are_bounded_and_oldest_first() -> None:
    serving = _Serving()
    refresher = VectorRefresher(serving, slice_users=3)
    refresher.add((UserState(user_id=u), [float(u)]) for u in range(7))
    sizes = []
    while refresher.refresh_some():
        sizes.append(len(serving.calls[-1][0]))
    assert sizes == [3, 3, 1]
    assert [s.user_id for s in serving.calls[0][0]] == [0, 1, 2]


def test_timestamps_per_user_are_bounded() -> None:
    refresher = VectorRefresher(_Serving(), slice_users=1)
    for i in range(3 * MAX_TS_PER_USER):
        refresher.add([(UserState(user_id=1), [float(i)])])
    refresher.refresh_some()
    assert len(refresher.serving.calls[0][1]) == MAX_TS_PER_USER


def test_run_refreshes_in_the_background_and_survives_errors() -> None:
    class Failing(_Serving):
        def refresh(self, states, stamps):  # type: ignore[no-untyped-def]
            super().refresh(states, stamps)
            if len(self.calls) == 1:
                raise RuntimeError("model failure")

    async def scenario() -> Failing:
        serving = Failing()
        refresher = VectorRefresher(serving, slice_users=2)
        task = asyncio.ensure_future(refresher.run())
        refresher.add((UserState(user_id=u), [0.0]) for u in range(5))
        for _ in range(20):
            await asyncio.sleep(0)
        refresher.add([(UserState(user_id=9), [1.0])])
        for _ in range(20):
            await asyncio.sleep(0)
        task.cancel()
        return serving

    serving = asyncio.run(scenario())
    refreshed = [s.user_id for states, _ in serving.calls for s in states]
    assert refreshed == [0, 1, 2, 3, 4, 9]  # the failing slice did not stop the rest
