"""``watchnext bench chaos`` on its own broker: SIGKILL, SIGTERM and a broker restart under
event and request load; the checker finds nothing lost, duplicated or wrong, and every request
is answered although the client never re-sends one."""

from __future__ import annotations

import pytest

from watchnext.bench.chaos import ChaosConfig, run_chaos
from watchnext.settings import Settings

pytestmark = pytest.mark.chaos


@pytest.mark.timeout(900)
def test_every_fault_kind_under_load_loses_and_duplicates_nothing(tmp_path) -> None:
    cfg = ChaosConfig(
        minutes=1.5,
        seed=3,
        event_rate=250.0,
        request_rate=8.0,
        users=800,
        partitions=4,
        gap_s=(8.0, 14.0),
        down_s=(2.0, 5.0),
        client_resend=False,  # every request sent once: the worker alone must answer it
    )
    report = run_chaos(Settings(), cfg, out=tmp_path)
    print(report)
    # every kind of fault happened, while load was running
    assert report.kills >= 1 and report.sigterms >= 1 and report.broker_restarts >= 1
    assert report.events > 10_000 and report.requests > 300
    # the accounting: nothing lost, nothing applied twice, no state differs from recomputation
    assert report.acked_events_missing_from_topics == 0
    assert (report.lost, report.duplicated, report.wrong_state) == (0, 0, 0), report.examples
    assert report.users_checked == cfg.users
    # the input holds re-sends (loadgen duplicates, producer retries): idempotence was exercised
    assert report.events_in_topics > report.events
    assert report.requests_unanswered == 0 and report.requests_errors == 0
    assert report.requests_retried == 0
    assert report.worker_crashes == 0 and report.not_drained == ""
    assert (tmp_path / "bench_chaos.json").is_file() and (tmp_path / "bench_chaos.png").is_file()
