"""Atomic, resumable checkpoints of a (possibly sharded) TorchRec model and its optimizers.

A checkpoint is one ``torch.save`` file holding *unsharded* state: every ``ShardedTensor`` of
the DistributedModelParallel state (embedding tables, fused row-wise optimizer state) is
gathered to rank 0, so the same file resumes a run on any number of processes and loads into
a plain (unsharded) model for evaluation and export. Files are written to a temporary name and
renamed, so a killed run never leaves a truncated checkpoint behind.
"""
import glob
import os
import re
from typing import Any, Dict, Optional, Tuple

import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor

from silverrec.atomic_file import write_atomically
from silverrec.train.distributed import DistContext

_STEP_FILE = re.compile(r"step_(\d+)\.pt$")


def gather_state(state: Any, ctx: DistContext) -> Any:
    """The full, unsharded copy of a nested state on rank 0 (``None`` on the other ranks).

    Every rank sends rank 0 its leaves: the local shards of each ShardedTensor (with their
    offsets) and its plain tensors and values. The ranks' structures may differ (TorchRec's
    fused optimizer lists only the state of locally held tables), so rank 0 merges the leaves
    by path and assembles every ShardedTensor from the shards of all ranks. Must be called on
    every rank (it is a collective).
    """
    leaves = list(_leaves(state, ()))
    if ctx.world_size == 1:
        gathered = [leaves]
    else:
        gathered = [None] * ctx.world_size if ctx.is_main else None
        dist.gather_object(leaves, gathered, dst=0)
    if not ctx.is_main:
        return None
    merged: Dict[Tuple, Any] = {}
    for rank_leaves in gathered:
        for path, kind, payload in rank_leaves:
            if kind == "shards":
                size, shards = payload
                if not shards:  # a ShardedTensor with no shard on that rank
                    continue
                if merged.get(path) is None:
                    merged[path] = torch.empty(size, dtype=shards[0][1].dtype)
                full = merged[path]
                for offsets, tensor in shards:
                    full[tuple(slice(o, o + n) for o, n in zip(offsets, tensor.shape))] = tensor
            else:
                merged.setdefault(path, payload)
    return _unflatten(merged)


def _leaves(state: Any, path: Tuple):
    """(path, kind, payload) of every leaf; path items are ("d", key) or ("l", index)."""
    if isinstance(state, ShardedTensor):
        shards = [(tuple(sh.metadata.shard_offsets), sh.tensor.detach().cpu().clone()) for sh in state.local_shards()]
        yield path, "shards", (tuple(state.size()), shards)
    elif isinstance(state, dict):
        for k, v in state.items():
            yield from _leaves(v, path + (("d", k),))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            yield from _leaves(v, path + (("l", i),))
    elif isinstance(state, torch.Tensor):
        yield path, "tensor", state.detach().cpu().clone()
    else:
        yield path, "value", state


def _unflatten(merged: Dict[Tuple, Any]) -> Any:
    root: Dict[Any, Any] = {}
    for path, value in merged.items():
        if not path:
            return value
        node = root
        for kind_key in path[:-1]:
            node = node.setdefault(kind_key, {})
        node[path[-1]] = value
    return _containers(root)


def _containers(node: Any) -> Any:
    if not isinstance(node, dict) or not node or not all(isinstance(k, tuple) and len(k) == 2 for k in node):
        return node
    if all(kind == "l" for kind, _ in node):
        return [_containers(node[("l", i)]) for i in range(len(node))]
    return {key: _containers(v) for (_, key), v in node.items()}


def scatter_into(target: Any, full: Any, where: str = "") -> Any:
    """Copies full (unsharded) tensors into a nested state of the same structure.

    ShardedTensors receive the slices of their local shards; plain tensors are copied whole;
    other leaves (learning rates, parameter names) keep the target's values, so the current
    config's hyperparameters apply to a resumed run. Returns ``target`` (filled in place),
    ready for ``load_state_dict``.
    """
    if isinstance(target, ShardedTensor):
        _check_shape(target.size(), full, where)
        for shard in target.local_shards():
            index = tuple(
                slice(o, o + s) for o, s in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes)
            )
            shard.tensor.copy_(full[index])
        return target
    if isinstance(target, dict):
        missing = set(target) - set(full)
        if missing:
            raise ValueError(f"checkpoint is missing {where or 'state'} keys: {sorted(missing)[:5]}")
        for k in target:
            target[k] = scatter_into(target[k], full[k], f"{where}.{k}" if where else str(k))
        return target
    if isinstance(target, list):
        if not isinstance(full, list) or len(full) != len(target):
            return target
        return [scatter_into(t, f, f"{where}[{i}]") for i, (t, f) in enumerate(zip(target, full))]
    if isinstance(target, torch.Tensor):
        _check_shape(target.shape, full, where)
        target.copy_(full)
        return target
    return target  # non-tensor leaves (hyperparameters, parameter names) stay as configured now


def save_checkpoint(path: str, payload: Dict[str, Any]) -> None:
    """Writes ``payload`` to ``path`` atomically (temporary file in the same folder + rename)."""
    write_atomically(path, lambda tmp: torch.save(payload, tmp), ".pt")


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Loads a checkpoint; raises ``FileNotFoundError``/``ValueError`` naming the path."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise ValueError(f"checkpoint {path!r} could not be read ({type(err).__name__}: {err})") from err
    for key in ("model", "step", "schema", "model_config"):
        if key not in payload:
            raise ValueError(f"checkpoint {path!r} has no {key!r} entry; is it a silverrec checkpoint?")
    return payload


def step_path(folder: str, step: int) -> str:
    return os.path.join(folder, f"step_{step:08d}.pt")


def latest_checkpoint(folder: str) -> Optional[str]:
    """The checkpoint with the highest step in ``folder``, or None."""
    best, best_step = None, -1
    for p in glob.glob(os.path.join(folder, "step_*.pt")):
        m = _STEP_FILE.search(p)
        if m and int(m.group(1)) > best_step:
            best, best_step = p, int(m.group(1))
    return best


def prune_checkpoints(folder: str, keep: int) -> None:
    """Removes all but the ``keep`` most recent checkpoints."""
    found = sorted(
        (int(m.group(1)), p) for p in glob.glob(os.path.join(folder, "step_*.pt")) if (m := _STEP_FILE.search(p))
    )
    for _, p in found[: max(len(found) - keep, 0)]:
        os.remove(p)


def _check_shape(shape: Any, full: Any, where: str) -> None:
    if not isinstance(full, torch.Tensor) or tuple(full.shape) != tuple(shape):
        got = tuple(full.shape) if isinstance(full, torch.Tensor) else type(full).__name__
        raise ValueError(f"checkpoint entry {where!r} has shape {got}, the model expects {tuple(shape)}")
