"""Gradient averaging across ranks: sparse tables (touched rows) and dense gradients, 2 gloo
processes on this machine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from model import distributed


def _rows(rank: int) -> torch.Tensor:
    # rank 0 touches rows 1 and 3 (row 3 twice), rank 1 touches rows 3 and 4
    return torch.tensor([[1, 3, 3], [3, 4, 4]][rank])


def _ranks(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.manual_seed(0)  # same init everywhere, as the trainers' seeded models are
    table = nn.Embedding(6, 3, sparse=True)
    untouched_here = nn.Embedding(6, 3, sparse=True)
    dense = nn.Linear(3, 1)
    with torch.no_grad():
        table.weight.add_(rank)  # differs per rank: wrap() must broadcast rank 0's tables
    net = nn.ModuleDict({"table": table, "other": untouched_here, "dense": dense})
    wrapped = distributed.wrap(_Forward(net))
    tables = distributed.table_parameters(net)
    assert len(tables) == 2
    x = wrapped(_rows(rank), rank)
    x.backward()
    distributed.average_gradients(tables)
    result = {
        "weight": table.weight.detach().clone(),
        "table": table.weight.grad.to_dense(),
        "other": untouched_here.weight.grad.to_dense(),
        "dense": dense.weight.grad.clone(),
    }
    torch.save(result, f"{out}.{rank}")
    del wrapped  # DDP's reducer holds the process group
    distributed.finish()
    assert not dist.is_initialized()


class _Forward(nn.Module):
    def __init__(self, net: nn.ModuleDict) -> None:
        super().__init__()
        self.net = net

    def forward(self, rows: torch.Tensor, rank: int) -> torch.Tensor:
        """rows [R] -> scalar; the second table is used on rank 0 only."""
        h = self.net["table"](rows) * (rank + 1)  # [R, 3]
        if rank == 0:
            h = h + self.net["other"](torch.tensor([5]))
        return self.net["dense"](h).sum()


def _single(rank: int, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    table = nn.Embedding(6, 3, sparse=True)
    other = nn.Embedding(6, 3, sparse=True)
    dense = nn.Linear(3, 1)
    with torch.no_grad():
        table.weight.copy_(weight)
    net = _Forward(nn.ModuleDict({"table": table, "other": other, "dense": dense}))
    net(_rows(rank), rank).backward()
    return {"table": table.weight.grad.to_dense(), "dense": dense.weight.grad}


@pytest.mark.timeout(120)
def test_two_ranks_average_sparse_and_dense_gradients(tmp_path: Path) -> None:
    out = str(tmp_path / "grads")
    mp.spawn(_ranks, args=(str(tmp_path / "store"), out), nprocs=2, join=True)
    zero = torch.load(f"{out}.0", weights_only=True)
    one = torch.load(f"{out}.1", weights_only=True)
    # rank 1 started from rank 0's table (broadcast), so both ranks hold the same weights
    assert torch.equal(zero["weight"], one["weight"])
    expected = [_single(r, zero["weight"]) for r in (0, 1)]
    for got in (zero, one):
        mean_table = (expected[0]["table"] + expected[1]["table"]) / 2
        assert torch.allclose(got["table"], mean_table, atol=1e-6)
        assert torch.allclose(got["dense"], (expected[0]["dense"] + expected[1]["dense"]) / 2)
        # rows nobody touched stay exactly zero
        assert torch.equal(got["table"][[0, 2, 5]], torch.zeros(3, 3))
    # the second table: touched (row 5) on rank 0 only, averaged over both ranks
    assert torch.allclose(zero["other"], one["other"])
    alone = zero["other"] * 2  # what rank 0 alone contributed
    assert alone[5].abs().sum() > 0 and torch.equal(alone[:5], torch.zeros(5, 3))


def _sequence_ranks(rank: int, store: str, out: str) -> None:
    from model.examples import UserContext
    from model.protocol import UserTimeline
    from model.train_candidate import TrainConfig, fit

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    tl = {}
    for u in range(1, 41):  # ring walks, as the sequence unit test's
        start = (u * 7) % 20
        walk = [(start + k) % 20 + 1 for k in range(12)]
        tl[u] = UserTimeline(u, tuple(float(k) for k in range(12)), tuple((i,) for i in walk))
    cfg = TrainConfig(epochs=2, negatives=8, use_demographics=False, seed=0, progress=False)
    model = {"history_encoder": "sequence", "depth": 1, "embed_dim": 16, "out_dim": 16}
    trained = fit(tl, UserContext.build({}), model, cfg)
    torch.save(trained.model.state_dict(), f"{out}.{rank}")
    distributed.finish()


@pytest.mark.timeout(120)
def test_sequence_wise_training_keeps_two_ranks_identical(tmp_path: Path) -> None:
    """Each rank trains on its own half of the windows (sharded, see test_sequence_source);
    the replicas stay equal only if every parameter's gradient — attention, the sparse item
    and search tables, the tower — is averaged across ranks."""
    out = str(tmp_path / "seq")
    mp.spawn(_sequence_ranks, args=(str(tmp_path / "store"), out), nprocs=2, join=True)
    zero = torch.load(f"{out}.0", weights_only=True)
    one = torch.load(f"{out}.1", weights_only=True)
    assert zero.keys() == one.keys() and "history.blocks.0.attn.in_proj_weight" in zero
    for name in zero:
        assert torch.allclose(zero[name], one[name], atol=1e-6), name
