"""Snapshots are trusted only as far as they deserve: regular files read once, size-capped and
strictly described, and a shipped index that passes its checksum still has to prove it loads.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.candidate_snapshot import export_candidates, load_candidates
from model.snapshot import MANIFEST, META, WEIGHTS, SnapshotError, load_snapshot
from model.train_candidate import TrainConfig
from serving.index import INDEX_FILE, IndexConfig, ItemIndex
from serving.recommend import Recommender, ServingModels, index_extras, latest_snapshots
from stream.events import RecommendationRequest
from tests.mldata import write_ratings_csv
from watchnext.train import run_train


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("trust")
    write_ratings_csv(root / "ml", seed=5, users=30, items=90, per_user=(8, 15))
    return run_train(root / "ml", root / "snap", epochs=1)


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _rewrite_manifest(path: Path, **changes: Any) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.update(changes)
    (path / MANIFEST).write_text(json.dumps(manifest))


def _replace_consistently(path: Path, name: str, data: bytes) -> None:
    """Tampering that the checksum cannot see: new bytes and a manifest recomputed for them."""
    (path / name).write_bytes(data)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (path / MANIFEST).write_text(json.dumps(manifest))


# --- symlinks, stray entries, special files ----------------------------------------------------


def test_a_symlinked_snapshot_directory_is_refused_and_not_found(pair, tmp_path: Path) -> None:
    cands, ranker = pair
    root = tmp_path / "root"
    root.mkdir()
    real = _copy(cands, root / cands.name)
    _copy(ranker, root / ranker.name)
    outside = _copy(cands, tmp_path / "outside")
    link = root / "candidates-zzz-link"
    link.symlink_to(outside)  # newer mtime and a later name: it would win if it were followed
    with pytest.raises(SnapshotError, match="symlink"):
        load_snapshot(link)
    assert latest_snapshots(root) == (real, root / ranker.name)


@pytest.mark.parametrize("name", [WEIGHTS, META, MANIFEST])
def test_a_symlinked_file_is_refused_even_with_identical_content(
    pair, tmp_path: Path, name: str
) -> None:
    snap = _copy(pair[0], tmp_path / "c")
    target = tmp_path / f"elsewhere-{name}"
    target.write_bytes((snap / name).read_bytes())
    (snap / name).unlink()
    (snap / name).symlink_to(target)
    with pytest.raises(SnapshotError, match="symlink"):
        load_snapshot(snap)


def test_unlisted_entries_are_refused(pair, tmp_path: Path) -> None:
    snap = _copy(pair[0], tmp_path / "c")
    (snap / "extra.bin").symlink_to("/etc/hostname")
    with pytest.raises(SnapshotError, match="unlisted"):
        load_snapshot(snap)
    (snap / "extra.bin").unlink()
    (snap / "notes.txt").write_text("hello")
    with pytest.raises(SnapshotError, match="unlisted"):
        load_snapshot(snap)


def test_a_fifo_in_place_of_a_file_is_refused_without_blocking(pair, tmp_path: Path) -> None:
    snap = _copy(pair[0], tmp_path / "c")
    (snap / META).unlink()
    os.mkfifo(snap / META)
    with pytest.raises(SnapshotError, match="not a regular file"):
        load_snapshot(snap)


# --- sizes and the manifest ---------------------------------------------------------------------


def test_files_over_their_cap_are_refused_before_reading(pair, tmp_path: Path) -> None:
    snap = _copy(pair[0], tmp_path / "c")
    size = (snap / WEIGHTS).stat().st_size
    with pytest.raises(SnapshotError, match=r"weights\.safetensors.*cap"):
        load_snapshot(snap, max_file_bytes=size - 1)
    with pytest.raises(SnapshotError, match=r"meta\.json.*cap"):
        load_snapshot(snap, max_meta_bytes=100)
    assert load_snapshot(snap, max_file_bytes=size).version  # the cap itself is allowed
    (snap / MANIFEST).write_bytes(b" " * (1 << 20) + (snap / MANIFEST).read_bytes())
    with pytest.raises(SnapshotError, match=r"manifest\.json.*cap"):
        load_snapshot(snap)


def _entry(path: Path) -> dict[str, Any]:
    return json.loads((path / MANIFEST).read_text())["files"][META]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.update(format=True),
        lambda m: m.update(format="1"),
        lambda m: m.pop("kind"),
        lambda m: m.update(kind=["candidates"]),
        lambda m: m.update(version="../x"),
        lambda m: m.update(created="yesterday"),
        lambda m: m.update(created=float("nan")),
        lambda m: m.update(signed_by="me"),
        lambda m: m.update(files=[]),
        lambda m: m["files"].pop(META),
        lambda m: m["files"][META].update(sha256=m["files"][META]["sha256"].upper()),
        lambda m: m["files"][META].update(sha256="00"),
        lambda m: m["files"][META].update(bytes=-1),
        lambda m: m["files"][META].update(bytes=True),
        lambda m: m["files"][META].update(bytes=str(m["files"][META]["bytes"])),
        lambda m: m["files"][META].update(mode="0644"),
        lambda m: m["files"].update({"x": "not an entry"}),
        lambda m: m["files"].update({"sub/x": {"sha256": "0" * 64, "bytes": 0}}),
    ],
)
def test_a_manifest_is_validated_field_by_field(pair, tmp_path: Path, mutate) -> None:
    snap = _copy(pair[0], tmp_path / "c")
    manifest = json.loads((snap / MANIFEST).read_text())
    mutate(manifest)
    (snap / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError):
        load_snapshot(snap)


def test_each_file_is_opened_once_and_loaded_from_the_hashed_bytes(
    pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No path is read twice, so nothing swapped in after verification can be loaded."""
    snap = _copy(pair[0], tmp_path / "c")
    opened: list[str] = []
    real_open = os.open

    def counting_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        opened.append(os.path.basename(os.fspath(path)))
        assert flags & os.O_NOFOLLOW
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    loaded = load_snapshot(snap)
    monkeypatch.undo()
    names = sorted(json.loads((snap / MANIFEST).read_text())["files"])
    assert sorted(opened) == sorted(["c", MANIFEST, *names])
    assert loaded.extras[INDEX_FILE] == (snap / INDEX_FILE).read_bytes()


def test_weights_that_are_not_safetensors_are_refused_cleanly(pair, tmp_path: Path) -> None:
    snap = _copy(pair[0], tmp_path / "c")
    _replace_consistently(snap, WEIGHTS, b"\xff" * 64)
    with pytest.raises(SnapshotError, match="safetensors"):
        load_snapshot(snap)


# --- the shipped index -------------------------------------------------------------------------


def _ivf_snapshot(pair: tuple[Path, Path], root: Path, version: str) -> Path:
    """The candidate snapshot re-exported with an IVF index (the large-catalogue case)."""
    trained, snap = load_candidates(pair[0])
    tc = {k: v for k, v in snap.meta["train_config"].items() if k in TrainConfig.__annotations__}
    extras = index_extras(trained, IndexConfig(exact_max_items=10))
    return export_candidates(trained, root, TrainConfig(**tc), {}, version, extras=extras)


IVF = IndexConfig(exact_max_items=10)  # the worker treats this catalogue as large


def _serves(models: ServingModels) -> None:
    rec = Recommender(models, retrieve=20)
    resp = rec.recommend(None, RecommendationRequest(request_id="r", user_id=1, k=5), 100.0)
    assert resp.error is None and len(resp.items) == 5


def test_a_valid_shipped_ivf_index_is_probed_then_used(pair, tmp_path: Path) -> None:
    cands = _ivf_snapshot(pair, tmp_path, "ivf")
    models = ServingModels.load(cands, pair[1], IVF)
    assert models.index.origin == "shipped" and not models.index.exact
    _serves(models)


def test_a_consistently_tampered_index_is_rebuilt_and_serves(pair, tmp_path: Path) -> None:
    """Garbage with a recomputed manifest passes the checksum; it must not reach FAISS."""
    cands = _ivf_snapshot(pair, tmp_path, "garbage")
    _replace_consistently(cands, INDEX_FILE, b"IwFl" + os.urandom(4096))
    models = ServingModels.load(cands, pair[1], IVF)
    assert models.index.origin == "rebuilt" and not models.index.exact
    _serves(models)


def test_an_index_that_fails_its_probe_is_rebuilt(
    pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Structurally fine bytes on which native code crashes: the child dies, not the worker."""
    cands = _ivf_snapshot(pair, tmp_path, "crash")
    monkeypatch.setattr(
        "serving.index_probe._PROBE_CODE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    )
    models = ServingModels.load(cands, pair[1], IVF)
    assert models.index.origin == "rebuilt"
    _serves(models)


def test_a_small_catalogue_never_deserializes_the_shipped_index(
    pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cands = _copy(pair[0], tmp_path / pair[0].name)
    _replace_consistently(cands, INDEX_FILE, b"\0" * 100)

    def refuse(*_: Any) -> None:
        raise AssertionError("deserialized a shipped index for an exact catalogue")

    monkeypatch.setattr("faiss.deserialize_index", refuse)
    models = ServingModels.load(cands, pair[1])
    assert models.index.exact and models.index.origin == "built"
    emb = load_snapshot(cands).tensors["item_embeddings"].numpy()
    exact = ItemIndex(emb, models.index.item_ids)
    assert np.array_equal(models.index.search(emb[:5], 10)[0], exact.search(emb[:5], 10)[0])


# --- the weights are parsed from the hashed bytes ------------------------------------------------


def test_weights_of_every_dtype_we_may_write_round_trip(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load

    from model.snapshot import write_snapshot

    tensors = {
        "f32": torch.randn(7, 3),
        "bf16": torch.randn(5).to(torch.bfloat16),
        "f16": torch.randn(2, 2).half(),
        "i64": torch.arange(9).reshape(3, 3),
        "flags": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
    }
    path = write_snapshot(tmp_path, "test", tensors, {"a": 1}, version="v")
    loaded = load_snapshot(path).tensors
    reference = load((path / WEIGHTS).read_bytes())
    assert set(loaded) == set(tensors) == set(reference)
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype and torch.equal(loaded[name], value)
        assert torch.equal(loaded[name], reference[name])
    loaded["f32"] += 1  # ordinary writable tensors, not views of some buffer


def _safetensors(header: dict[str, Any], data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


@pytest.mark.parametrize(
    ("header", "data"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12),  # gap at end
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),  # size
        ({"a": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 80]}}, b"\0" * 8),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},  # overlap
            },
            b"\0" * 12,
        ),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}}, b"\0" * 8),
        ({"__metadata__": {"k": 1}}, b""),
    ],
)
def test_malformed_safetensors_are_refused_even_when_hashed_consistently(
    pair, tmp_path: Path, header: dict[str, Any], data: bytes
) -> None:
    snap = _copy(pair[0], tmp_path / "c")
    _replace_consistently(snap, WEIGHTS, _safetensors(header, data))
    with pytest.raises(SnapshotError, match="not a valid safetensors file"):
        load_snapshot(snap)


def test_a_corrupt_weights_file_is_a_checksum_mismatch(pair, tmp_path: Path) -> None:
    snap = _copy(pair[0], tmp_path / "c")
    blob = bytearray((snap / WEIGHTS).read_bytes())
    blob[3] ^= 0xFF  # inside the header length: the header no longer parses
    (snap / WEIGHTS).write_bytes(bytes(blob))
    with pytest.raises(SnapshotError, match="checksum mismatch"):
        load_snapshot(snap)
