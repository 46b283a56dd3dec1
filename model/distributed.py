"""Data-parallel training with torch DDP on CPU (gloo), launched by ``torchrun``.

Every rank builds the same data and vocabularies (deterministic), takes an equal, disjoint share
of each epoch's examples, and gradients are averaged across ranks after every backward pass, so
the replicas stay identical. The per-rank batch is the configured batch divided by the world
size: the global batch, and with it the optimisation, stays what one process would do.
Only rank 0 writes snapshots.

Embedding tables are the exception DDP cannot take: their gradients are sparse (a step touches
the rows of its batch and negatives only, which is what lets a 1M-item table train on a CPU),
and DDP's bucketed all-reduce wants dense gradients of a fixed size. So DDP is told to ignore
those tables, and :func:`average_sparse_gradients` averages them after ``backward``: every rank
all-gathers the touched rows (indices + values, padded to the largest count), and the sum over
ranks divided by the world size is the averaged gradient — the traffic is the touched rows, not
the table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


def init_from_env() -> bool:
    """Join the process group ``torchrun`` describes (WORLD_SIZE > 1); False when alone."""
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist.init_process_group("gloo")
    return True


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_leader() -> bool:
    return rank_and_world()[0] == 0


def shard(order: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """This rank's share of an epoch's example order: equal sizes on every rank (DDP needs the
    same number of steps everywhere), the few left-over examples are dropped."""
    rank, world = rank_and_world()
    n = len(order) // world * world
    return order[rank:n:world]


def per_rank_batch(batch: int) -> int:
    return max(1, batch // rank_and_world()[1])


def table_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The weights of embedding modules built with ``sparse=True``: DDP would expect a sparse
    gradient from each of them, which a full softmax over the output table does not give."""
    found: dict[int, nn.Parameter] = {}
    for m in module.modules():
        if isinstance(m, nn.Embedding | nn.EmbeddingBag) and m.sparse:
            found[id(m.weight)] = m.weight
    return list(found.values())


def wrap(module: nn.Module) -> nn.Module:
    """``module`` in DDP when running distributed (gloo on CPU), else unchanged.

    DDP ignores the :func:`table_parameters` (they are broadcast from rank 0 here, as DDP does
    for the others), and the caller averages their gradients with :func:`average_gradients`
    after each backward pass.
    """
    if rank_and_world()[1] == 1:
        return module
    sparse = table_parameters(module)
    ids = {id(p) for p in sparse}
    ignored = [n for n, p in module.named_parameters(remove_duplicate=False) if id(p) in ids]
    if ignored:
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            module, ignored
        )
        with torch.no_grad():
            for p in sparse:
                dist.broadcast(p.data, src=0)
    # find_unused_parameters: ablations (no search, no demographics) leave parameters unused
    return nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)


def average_gradients(params: Sequence[nn.Parameter]) -> None:
    """Replace each parameter's gradient by its average over all ranks (in place).

    Sparse gradients are all-gathered as touched rows; dense ones are all-reduced. A rank whose
    batch did not touch a table (gradient None) contributes nothing; the result is None only
    when no rank touched it. Every rank must call this with the same parameters in the same
    order, and a given parameter's gradient must be of the same kind on every rank.
    """
    _, world = rank_and_world()
    if world == 1:
        return
    for p in params:
        if p.grad is not None and not p.grad.is_sparse:
            dist.all_reduce(p.grad)
            p.grad /= world
            continue
        _average_sparse(p, world)


def _average_sparse(p: nn.Parameter, world: int) -> None:
    grad = p.grad
    if grad is None:
        idx = torch.zeros(0, dtype=torch.long)
        val = torch.zeros((0, *p.shape[1:]), dtype=p.dtype)
    else:
        grad = grad.coalesce()
        idx, val = grad.indices()[0], grad.values()
    counts = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([len(idx)]))
    keep = [int(c.item()) for c in counts]
    most = max(keep)
    if most == 0:
        p.grad = None
        return
    pad = most - len(idx)
    idx = torch.cat([idx, torch.zeros(pad, dtype=torch.long)])
    val = torch.cat([val, torch.zeros((pad, *val.shape[1:]), dtype=val.dtype)])
    all_idx = [torch.empty_like(idx) for _ in range(world)]
    all_val = [torch.empty_like(val) for _ in range(world)]
    dist.all_gather(all_idx, idx)
    dist.all_gather(all_val, val)
    indices = torch.cat([i[:k] for i, k in zip(all_idx, keep, strict=True)])
    values = torch.cat([v[:k] for v, k in zip(all_val, keep, strict=True)]) / world
    p.grad = torch.sparse_coo_tensor(indices[None], values, p.shape).coalesce()


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def finish() -> None:
    """Leave the process group: every rank waits for the others, then tears gloo down.

    Without the barrier, a rank that tears down (or exits) while its peer still has a
    collective in flight can take the peer down with it: gloo's pair threads abort the process
    ("terminate called without an active exception", SIGABRT; the two-rank unit test hit it
    once in CI, 15 local reruns did not). Without the teardown, gloo's threads outlive the
    interpreter's finalization, which can abort the same way. A no-op when not distributed.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()
