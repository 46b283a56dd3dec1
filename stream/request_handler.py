"""The request handler: one consumed request in, exactly one response out (never an exception).

A named unit with its dependencies passed in, so a unit test or a fuzzer reaches it without
faust: ``load_state`` reads the user's stored state (decoded, as the worker's state cache
returns it, or the raw table value), ``send(kind, key, value, headers=, partition=)`` buffers
a record (``kind`` is ``responses``, ``impression`` or ``deadletter``) and returns the producer
future.
The faust agent in :mod:`stream.app` only binds the event, calls :meth:`RequestHandler.handle`
and hands the futures to the delivery barrier.

A response goes to the request's ``reply_partition`` when it names one, carries the request's
headers back (:func:`echo_headers`), and is marked ``expired`` (recording no impression) when
it is computed past the request's ``deadline_ms`` (:func:`deadline_of`).

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from stream import metrics
from stream.attribution import AttributionMetrics
from stream.contract import (
    EventRules,
    decode_request,
    reply_partition_of,
    request_id_of,
    synthetic_request_id,
)
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

Send = Callable[..., Any]  # send(kind, key, value, headers=None, partition=None) -> future
ApplyImpression = Callable[[ImpressionEvent, Position], list[Any]]
# The header of an impression the request handler already applied to the user's state: the
# ingest agent acks it without applying it again (it is still published, for training and for
# any other consumer of the impression topic).
APPLIED_HEADER = ("watchnext-applied", b"request")
CONTENT_TYPE = ("content-type", b"application/json")
# a request's headers a response carries back (``traceparent`` and whatever the client set),
# bounded: a response must fit its topic whatever a request carried
ECHO_HEADERS_MAX = 32
ECHO_HEADER_BYTES = 4096
_INTERNAL_HEADERS = frozenset({APPLIED_HEADER[0], "watchnext-forwarded-from", CONTENT_TYPE[0]})


class RequestRecord(NamedTuple):
    """One consumed request record: what the handler reads of it."""

    key: bytes | None
    value: bytes | None
    position: Position
    timestamp: float | None = None  # the record's Kafka timestamp (s): the deadline's origin
    headers: Sequence[tuple[str, bytes]] = ()


def echo_headers(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The response's headers: the request's own (``traceparent``...) but watchnext's
    internal ones, at most :data:`ECHO_HEADERS_MAX` of at most :data:`ECHO_HEADER_BYTES`
    each, then ``content-type: application/json``."""
    out: list[tuple[str, bytes]] = []
    for name, value in headers:
        if len(out) == ECHO_HEADERS_MAX:
            break
        if name in _INTERNAL_HEADERS or len(name) + len(value) > ECHO_HEADER_BYTES:
            continue
        out.append((name, value))
    return [*out, CONTENT_TYPE]


def deadline_of(request: RecommendationRequest, timestamp: float | None) -> float | None:
    """Wall-clock seconds past which the answer to ``request`` is expired (None: no deadline;
    counted from ``sent_ts``, else the record's timestamp)."""
    if request.deadline_ms is None:
        return None
    start = request.sent_ts if request.sent_ts is not None else timestamp
    return None if start is None else start + request.deadline_ms / 1000.0


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
        load_state: Callable[[int], UserState | bytes | None],
        send: Send,
        rules: EventRules,
        worker: str | None,
        payload_limit: int,
        apply_impression: ApplyImpression | None = None,
        response_partitions: int | None = None,
        attribution: AttributionMetrics | None = None,
    ) -> None:
        """``apply_impression(event, position)``, when given, applies the request's impression
        to the user's stored state at once (returning the futures of that write) and the
        impression is published marked as applied (:data:`APPLIED_HEADER`), so the ingest
        path does not apply it a second time. ``response_partitions``: the response topic's
        partition count, which a request's ``reply_partition`` must be below (None: any).
        ``attribution``: the worker's shown/attributed counters (shared with its ingest)."""
        self.apply_impression = apply_impression
        self.attribution = attribution or AttributionMetrics()
        self.response_partitions = response_partitions
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
        return self.handle_many([RequestRecord(key, value, position)], now)[0]

    def handle_many(
        self,
        items: Sequence[RequestRecord | tuple[bytes | None, bytes | None, Position]],
        now: float,
    ) -> list[Outcome]:
        """Answer a micro-batch of consumed requests: one outcome per item, in order.

        The valid requests are answered together (:meth:`Serving.answer_many`: one forward
        pass and one index search for all of them); if that fails, each is answered alone, so
        a request that breaks the model fails only itself.
        """
        records = [RequestRecord(*item) for item in items]
        outcomes: list[Outcome | None] = [None] * len(records)
        valid: list[tuple[int, RecommendationRequest]] = []
        for index, record in enumerate(records):
            key, value, position = record.key, record.value, record.position
            try:
                request = decode_request(value, key, now=now, rules=self.rules)
                self._check_reply_partition(request)
                valid.append((index, request))
            except InvalidEvent as exc:
                outcomes[index] = self._invalid(record, now, str(exc), [])
            except Exception as exc:  # a bug in validation must still answer
                log.exception("request at %s[%d]@%d: validation failed", *position)
                reason = f"unreadable request ({type(exc).__name__})"
                outcomes[index] = self._invalid(record, now, reason, [])
        if valid:
            requests = [request for _, request in valid]
            for (index, request), response in zip(
                valid, self._answer_all(requests, now), strict=True
            ):
                outcomes[index] = self._finish(request, response, now, records[index])
        return [o for o in outcomes if o is not None]

    def _check_reply_partition(self, request: RecommendationRequest) -> None:
        limit, wanted = self.response_partitions, request.reply_partition
        if wanted is not None and limit is not None and wanted >= limit:
            raise InvalidEvent(
                f"reply_partition: {wanted} is not a partition of the "
                f"response topic (it has {limit}: 0..{limit - 1})"
            )

    def _finish(
        self,
        request: RecommendationRequest,
        response: RecommendationResponse,
        now: float,
        record: RequestRecord,
    ) -> Outcome:
        """Record the impression (if items were shown and the answer is in time) and send
        the response."""
        futures: list[Any] = []
        position = record.position
        label = "error" if response.error else "ok"
        deadline = deadline_of(request, record.timestamp)
        if deadline is not None and not response.error:
            # the user's page was given up on: an impression would demote what nobody saw
            response = response.model_copy(update={"expired": time.time() > deadline})
            if response.expired:
                label = "expired"
        if response.items and not response.expired:
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
                            source_scores=it.source_scores,
                            source_ranks=it.source_ranks,
                        )
                        for p, it in enumerate(response.items)
                    ],
                    ts=now,
                    model_versions=response.model_versions or None,
                )
                key = str(request.user_id).encode()
                if self.apply_impression is not None:
                    futures.extend(self.apply_impression(shown, position))
                    futures.append(
                        self.send("impression", key, shown.to_json(), headers=[APPLIED_HEADER])
                    )
                else:
                    futures.append(self.send("impression", key, shown.to_json()))
                self.attribution.shown(response.model_versions, len(response.items))
            except Exception:  # the answer still goes out; the impression is only a signal
                log.exception("impression of request %s not recorded", request.request_id)
        futures.append(self._respond(request.request_id, response, record, request.reply_partition))
        metrics.REQUESTS.labels(label).inc()
        metrics.REQUEST_SECONDS.observe(max(time.time() - now, 0.0))
        return Outcome(request.request_id, label, futures)

    def _answer_all(
        self, requests: list[RecommendationRequest], now: float
    ) -> list[RecommendationResponse]:
        states = [self._state(request) for request in requests]
        many = getattr(self.serving, "answer_many", None)
        if many is not None and len(requests) > 1:
            try:
                responses = list(many(states, requests, now))
                if len(responses) == len(requests):
                    return responses
                log.error("batch of %d requests got %d answers", len(requests), len(responses))
            except Exception:  # answered one by one below: a bad request fails alone
                log.exception("micro-batch of %d requests failed; answering each", len(requests))
        return [self._answer_one(st, r, now) for st, r in zip(states, requests, strict=True)]

    def _answer_one(
        self, state: UserState | None, request: RecommendationRequest, now: float
    ) -> RecommendationResponse:
        try:
            return self.serving.answer(state, request, now)
        except Exception as exc:  # a model or state failure must not stop the worker
            log.exception("request %s failed", request.request_id)
            return RecommendationResponse(
                request_id=request.request_id,
                user_id=request.user_id,
                error=f"internal error: {type(exc).__name__}",
            )

    def _state(self, request: RecommendationRequest) -> UserState | None:
        try:
            stored = self.load_state(request.user_id)
            return decode(stored) if isinstance(stored, bytes) else stored
        except Exception:  # unreadable stored state: answer as for a new user, keep going
            log.exception("unreadable state of user %s; answering without it", request.user_id)
            return None

    def _respond(
        self,
        request_id: str,
        response: RecommendationResponse,
        record: RequestRecord,
        partition: int | None = None,
    ) -> Any:
        try:
            body = response.to_json()
        except Exception:  # e.g. a score that is not JSON-serialisable: still one answer
            log.exception("response to %s not serialisable", request_id)
            body = RecommendationResponse(
                request_id=request_id, error="internal error: response not serialisable"
            ).to_json()
        headers = echo_headers(record.headers)
        if partition is None:
            return self.send("responses", request_id.encode(), body, headers=headers)
        return self.send(
            "responses", request_id.encode(), body, headers=headers, partition=partition
        )

    def _invalid(
        self, record: RequestRecord, now: float, reason: str, futures: list[Any]
    ) -> Outcome:
        key, value, position = record.key, record.value, record.position
        label = reason_class(reason)
        reason = f"invalid request: {reason}"
        request_id = request_id_of(value) or synthetic_request_id(*position)
        error = RecommendationResponse(request_id=request_id, error=reason)
        futures.append(self._respond(request_id, error, record, self._reply_of(value)))
        letter = raw_dead_letter(
            key, value, position, reason, now, self.worker, payload_limit=self.payload_limit
        )
        futures.append(self.send("deadletter", letter_key(key), letter.to_json()))
        metrics.REQUESTS.labels("invalid").inc()
        metrics.DEAD_LETTERS.labels("requests", label).inc()
        return Outcome(request_id, "invalid", futures)

    def _reply_of(self, value: bytes | None) -> int | None:
        """The ``reply_partition`` of an invalid request when it can be read safely and is a
        partition of the response topic (so the client waiting there sees its error), else
        None."""
        found = reply_partition_of(value)
        limit = self.response_partitions
        return found if found is not None and (limit is None or found < limit) else None
