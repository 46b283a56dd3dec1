"""The request handler: one consumed request in, exactly one response out (never an exception).

A named unit with its dependencies passed in, so a unit test or a fuzzer reaches it without
faust: ``load_state`` reads the user's stored value, ``send(kind, key, value)`` buffers a record
(``kind`` is ``responses``, ``impression`` or ``deadletter``) and returns the producer future.
The faust agent in :mod:`stream.app` only binds the event, calls :meth:`RequestHandler.handle`
and hands the futures to the delivery barrier.

Every message on the request topic gets one response: the answer, or an error response for
anything invalid (then also a dead letter) or for an internal failure. The response carries the
request's ``request_id`` when one can be read safely (:func:`stream.contract.request_id_of`),
else the synthetic id ``invalid-<partition>-<offset>``
(:func:`stream.contract.synthetic_request_id`). Nothing between reading the request and
buffering its response may raise: every step is guarded, and the error response itself is built
from plain, pre-validated strings.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stream import metrics
from stream.contract import EventRules, decode_request, request_id_of, synthetic_request_id
from stream.events import (
    ImpressionEvent,
    InvalidEvent,
    RecommendationRequest,
    RecommendationResponse,
    ShownItem,
)
from stream.ingest import letter_key, raw_dead_letter, reason_class
from stream.state import Position, UserState, decode

log = logging.getLogger(__name__)
MAX_ID_CHARS = 128
IMPRESSION_PREFIX = "imp-"

Send = Callable[[str, bytes | None, bytes], Any]


def impression_id(request_id: str) -> str:
    """The event id of the impression a request records: ``imp-<request_id>`` when that fits
    the 128-character id limit, else ``imp-`` + the first 32 hex of the id's sha256.

    Deterministic, so a request answered twice (redelivery) records one impression.
    """
    plain = IMPRESSION_PREFIX + request_id
    if len(plain) <= MAX_ID_CHARS:
        return plain
    digest = hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return IMPRESSION_PREFIX + digest


@dataclass
class Outcome:
    """What handling one request did (for metrics and tests)."""

    request_id: str
    label: str  # ok, error, invalid
    futures: list[Any]


class RequestHandler:
    """Answers one request; see the module docstring for the guarantees."""

    def __init__(
        self,
        serving: Any,
        load_state: Callable[[int], bytes | None],
        send: Send,
        rules: EventRules,
        worker: str | None,
        payload_limit: int,
    ) -> None:
        self.serving = serving
        self.load_state = load_state
        self.send = send
        self.rules = rules
        self.worker = worker
        self.payload_limit = payload_limit

    def handle(
        self, key: bytes | None, value: bytes | None, position: Position, now: float
    ) -> Outcome:
        """Answer the request at ``position``; returns the futures of every record sent."""
        futures: list[Any] = []
        try:
            request = decode_request(value, key, now=now, rules=self.rules)
        except InvalidEvent as exc:
            return self._invalid(key, value, position, now, str(exc), futures)
        except Exception as exc:  # a bug in validation must still answer
            log.exception("request at %s[%d]@%d: validation failed", *position)
            return self._invalid(
                key, value, position, now, f"unreadable request ({type(exc).__name__})", futures
            )
        try:
            response = self._answer(request, now)
        except Exception as exc:  # a model or state failure must not stop the worker
            log.exception("request %s failed", request.request_id)
            response = RecommendationResponse(
                request_id=request.request_id,
                user_id=request.user_id,
                error=f"internal error: {type(exc).__name__}",
            )
        label = "error" if response.error else "ok"
        if response.items:
            # recorded before the answer leaves, so a client that acts on the response never
            # sees state that has not counted this impression yet
            try:
                shown = ImpressionEvent(
                    event_id=impression_id(request.request_id),
                    user_id=request.user_id,
                    request_id=request.request_id,
                    items=[
                        ShownItem(
                            item_id=it.item_id,
                            position=p,
                            source=it.source,
                            score=it.candidate_score,
                        )
                        for p, it in enumerate(response.items)
                    ],
                    ts=now,
                )
                futures.append(
                    self.send("impression", str(request.user_id).encode(), shown.to_json())
                )
            except Exception:  # the answer still goes out; the impression is only a signal
                log.exception("impression of request %s not recorded", request.request_id)
        futures.append(self._respond(request.request_id, response))
        metrics.REQUESTS.labels(label).inc()
        metrics.REQUEST_SECONDS.observe(max(time.time() - now, 0.0))
        return Outcome(request.request_id, label, futures)

    def _answer(self, request: RecommendationRequest, now: float) -> RecommendationResponse:
        raw = self.load_state(request.user_id)
        state: UserState | None
        try:
            state = None if raw is None else decode(raw)
        except Exception:  # unreadable stored state: answer as for a new user, keep going
            log.exception("unreadable state of user %s; answering without it", request.user_id)
            state = None
        return self.serving.answer(state, request, now)

    def _respond(self, request_id: str, response: RecommendationResponse) -> Any:
        try:
            body = response.to_json()
        except Exception:  # e.g. a score that is not JSON-serialisable: still one answer
            log.exception("response to %s not serialisable", request_id)
            body = RecommendationResponse(
                request_id=request_id, error="internal error: response not serialisable"
            ).to_json()
        return self.send("responses", request_id.encode(), body)

    def _invalid(
        self,
        key: bytes | None,
        value: bytes | None,
        position: Position,
        now: float,
        reason: str,
        futures: list[Any],
    ) -> Outcome:
        label = reason_class(reason)
        reason = f"invalid request: {reason}"
        request_id = request_id_of(value) or synthetic_request_id(*position)
        error = RecommendationResponse(request_id=request_id, error=reason)
        futures.append(self.send("responses", request_id.encode(), error.to_json()))
        letter = raw_dead_letter(
            key, value, position, reason, now, self.worker, payload_limit=self.payload_limit
        )
        futures.append(self.send("deadletter", letter_key(key), letter.to_json()))
        metrics.REQUESTS.labels("invalid").inc()
        metrics.DEAD_LETTERS.labels("requests", label).inc()
        return Outcome(request_id, "invalid", futures)
