"""A shipped FAISS index is parsed in Python and probed in a child before the worker loads it."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from serving.index import IndexConfig, ItemIndex
from serving.index_probe import (
    IndexFormatError,
    check_index_bytes,
    index_for_snapshot,
    probe_index_bytes,
)

N, DIM = 3000, 16


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(N, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def ivf_bytes(vectors: np.ndarray) -> bytes:
    return ItemIndex(vectors, np.arange(N), IndexConfig(exact_max_items=100)).to_bytes()


@pytest.fixture(scope="module")
def flat_bytes(vectors: np.ndarray) -> bytes:
    return ItemIndex(vectors, np.arange(N)).to_bytes()


def test_the_structure_of_both_kinds_we_write_is_accepted(ivf_bytes, flat_bytes) -> None:
    ivf = check_index_bytes(ivf_bytes, DIM, N)
    assert ivf.kind == "ivf" and ivf.nlist == IndexConfig().lists_for(N)
    assert check_index_bytes(flat_bytes, DIM, N).kind == "flat"
    assert len(flat_bytes) == 37 + 8 + 4 * N * DIM  # header, code count, the vectors


@pytest.mark.parametrize("expected", [(DIM + 1, N), (DIM, N - 1), (DIM, N + 1)])
def test_another_models_index_is_refused(ivf_bytes, flat_bytes, expected) -> None:
    for data in (ivf_bytes, flat_bytes):
        with pytest.raises(IndexFormatError, match="expected"):
            check_index_bytes(data, *expected)


def test_truncated_extended_or_foreign_bytes_are_refused(ivf_bytes, flat_bytes) -> None:
    for data in (ivf_bytes, flat_bytes):
        for cut in (0, 3, 4, 36, 40, 60, len(data) // 3, len(data) // 2, len(data) - 1):
            with pytest.raises(IndexFormatError):
                check_index_bytes(data[:cut], DIM, N)
        with pytest.raises(IndexFormatError, match="trailing"):
            check_index_bytes(data + b"\0", DIM, N)
    with pytest.raises(IndexFormatError, match="index type"):
        check_index_bytes(b"IHNf" + ivf_bytes[4:], DIM, N)


def test_inverted_list_ids_must_be_each_row_once(ivf_bytes) -> None:
    """Ids map to item ids at search time: a duplicate or out-of-range id is refused."""
    last_id = len(ivf_bytes) - 8
    (row,) = struct.unpack("<q", ivf_bytes[last_id:])
    for bad in (N, -5, (row + 1) % N):
        tampered = ivf_bytes[:last_id] + struct.pack("<q", bad)
        with pytest.raises(IndexFormatError, match="ids"):
            check_index_bytes(tampered, DIM, N)


def test_the_probe_passes_a_valid_index(ivf_bytes) -> None:
    result = probe_index_bytes(ivf_bytes, DIM, N)
    assert result.ok, result.detail
    assert not probe_index_bytes(ivf_bytes, DIM, N - 1).ok  # sizes are checked in the child


def test_the_probe_refuses_truncated_serializations_without_hurting_the_caller(
    ivf_bytes,
) -> None:
    cuts = (3, 40, 100, 600, len(ivf_bytes) // 2, len(ivf_bytes) - 1)
    results = [probe_index_bytes(ivf_bytes[:cut], DIM, N) for cut in cuts]
    assert not any(r.ok for r in results), [r.detail for r in results]
    assert all(r.detail.startswith(("exit", "killed")) for r in results)


def test_the_probe_reports_a_crash_and_a_hang(ivf_bytes, monkeypatch) -> None:
    monkeypatch.setattr(
        "serving.index_probe._PROBE_CODE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    )
    crashed = probe_index_bytes(ivf_bytes, DIM, N)
    assert not crashed.ok and crashed.detail == "killed by SIGSEGV"
    monkeypatch.setattr("serving.index_probe._PROBE_CODE", "import time; time.sleep(60)")
    hung = probe_index_bytes(ivf_bytes, DIM, N, timeout_s=0.5)
    assert not hung.ok and "timed out" in hung.detail


def test_index_for_snapshot_picks_shipped_rebuilt_or_built(vectors, ivf_bytes, flat_bytes) -> None:
    ids = np.arange(100, 100 + N)
    large = IndexConfig(exact_max_items=100)
    shipped = index_for_snapshot(ivf_bytes, vectors, ids, large)
    assert shipped.origin == "shipped" and not shipped.exact
    rebuilt = index_for_snapshot(ivf_bytes[:-1], vectors, ids, large)
    assert rebuilt.origin == "rebuilt" and not rebuilt.exact
    assert np.array_equal(rebuilt.search(vectors[:5], 10)[0], shipped.search(vectors[:5], 10)[0])
    flat = index_for_snapshot(flat_bytes, vectors, ids, large)  # the trainer chose exact
    assert flat.exact and flat.origin == "built"
    small = index_for_snapshot(ivf_bytes, vectors, ids)  # exact catalogue: bytes unused
    assert small.exact and small.origin == "built"
    assert index_for_snapshot(None, vectors, ids, large).origin == "built"


def test_the_probe_works_over_stdin_where_there_is_no_memfd(ivf_bytes, monkeypatch) -> None:
    monkeypatch.setattr("serving.index_probe._sealed_memfd", lambda _: None)
    assert probe_index_bytes(ivf_bytes, DIM, N).ok
    assert not probe_index_bytes(ivf_bytes[: len(ivf_bytes) // 2], DIM, N).ok


def test_the_probe_leaves_no_descriptor_behind(ivf_bytes) -> None:
    import os

    before = set(os.listdir("/proc/self/fd"))
    probe_index_bytes(ivf_bytes, DIM, N)
    probe_index_bytes(ivf_bytes[:100], DIM, N)
    assert set(os.listdir("/proc/self/fd")) <= before
