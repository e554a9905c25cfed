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
import tempfile
from typing import Any, Dict, Optional

import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor

from silverrec.train.distributed import DistContext

_STEP_FILE = re.compile(r"step_(\d+)\.pt$")


def gather_state(state: Any, ctx: DistContext) -> Any:
    """Replaces every ShardedTensor in a nested state by its full tensor (on rank 0; None elsewhere).

    Must be called on every rank (the gathers are collectives).
    """
    if isinstance(state, ShardedTensor):
        out = torch.empty(state.size(), dtype=state.dtype) if ctx.is_main else None
        state.gather(dst=0, out=out)
        return out
    if isinstance(state, dict):
        return {k: gather_state(v, ctx) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(gather_state(v, ctx) for v in state)
    if isinstance(state, torch.Tensor):
        return state.detach().cpu().clone()
    return state


def scatter_into(target: Any, full: Any, where: str = "") -> Any:
    """Copies full (unsharded) tensors into a nested state of the same structure.

    ShardedTensors receive the slices of their local shards; plain tensors are copied whole.
    Returns ``target`` (filled in place), ready for ``load_state_dict``.
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
        return [scatter_into(t, f, f"{where}[{i}]") for i, (t, f) in enumerate(zip(target, full))]
    if isinstance(target, torch.Tensor):
        _check_shape(target.shape, full, where)
        target.copy_(full)
        return target
    return full


def save_checkpoint(path: str, payload: Dict[str, Any]) -> None:
    """Writes ``payload`` to ``path`` atomically (temporary file in the same folder + rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
