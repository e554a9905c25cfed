"""``silverrec-export``: a checkpoint -> one ``.pt2`` serving file (torch.export, dynamic batch).

    silverrec-export ckpt_path=runs/demo/checkpoints/step_00002000.pt k=100 output=retrieval.pt2

The serving graph: user feature tensors -> user tower -> exact top-K over the item embeddings
published from the trained item tower. Load it with ``silverrec.serve.ExportedRetriever``.
"""
import os
from typing import Any, Dict, Tuple

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from silverrec.data.batching import FeatureBatcher, HistoryIndex
from silverrec.data.dataset import JaggedColumn, RecDataset
from silverrec.models.two_tower import TwoTower
from silverrec.models.user_encoder import user_encoder_from_two_tower
from silverrec.retrieval.exact import ExactSearch
from silverrec.retrieval.serving import ExactRetrievalModule
from silverrec.serve.artifact import save_artifact
from silverrec.train.checkpoint import load_checkpoint
from silverrec.train.distributed import local_context
from silverrec.train.evaluator import embed_in_chunks
from silverrec.train.trainer import load_two_tower

@torch.no_grad()
def publish_item_embeddings(model: TwoTower, dataset: RecDataset) -> Tensor:
    """The item tower applied to every item of the catalogue: float32 [N, D], row = item row."""
    batcher = FeatureBatcher(dataset.schema, dataset.users, dataset.items)
    emb = embed_in_chunks(model.eval(), lambda rows: batcher.kjt(rows.size, item_rows=rows), dataset.items.num_rows, 1, local_context())
    if not torch.isfinite(emb).all():
        raise ValueError("the item tower produced NaN/inf embeddings; the checkpoint is unusable for publishing")
    return emb


def request_tensors(dataset: RecDataset, users: np.ndarray, history: JaggedColumn) -> Tuple[Tensor, Tensor]:
    """The serving module's ``(values [L], lengths [B, F])`` for user rows and their histories."""
    n_user_keys = len(dataset.schema.user_keys)
    kjt = FeatureBatcher(dataset.schema, dataset.users, dataset.items).kjt(users.size, user_rows=users, history=history)
    user_kjt = kjt.split([n_user_keys, len(dataset.schema.item_keys)])[0]
    return user_kjt.values(), user_kjt.lengths().view(n_user_keys, -1).t().contiguous()


def example_request(dataset: RecDataset, num_users: int = 4) -> Tuple[Tensor, Tensor]:
    """Request tensors of the first users with their latest training history (export example)."""
    users = np.arange(num_users) % dataset.users.num_rows
    history = HistoryIndex(dataset.interactions, dataset.split.train, dataset.users.num_rows).latest(
        users, dataset.schema.history_length
    )
    return request_tensors(dataset, users, history)


def export_retrieval(model: TwoTower, dataset: RecDataset, k: int, path: str, extra: Dict[str, Any]) -> Dict[str, Any]:
    """Builds the serving module, exports it with a dynamic batch and writes ``path`` atomically.

    Returns:
        Dict[str, Any]: the artifact metadata (schema, k, version stamp, ...).
    """
    items = publish_item_embeddings(model, dataset)
    module = ExactRetrievalModule(user_encoder_from_two_tower(model, dataset.schema), ExactSearch(items, k)).eval()
    values, lengths = example_request(dataset)
    batch = torch.export.Dim("batch", min=1, max=65536)
    total = torch.export.Dim("num_values", min=1, max=2**31 - 1)
    with torch.no_grad():
        program = torch.export.export(
            module, (values, lengths), dynamic_shapes={"values": {0: total}, "lengths": {0: batch}}, strict=False
        )
    meta = {"schema": dataset.schema.to_dict(), "k": k, "num_items": int(items.shape[0]), "dim": int(items.shape[1]), **extra}
    return save_artifact(program, path, meta)


def run_export(cfg: DictConfig) -> Dict[str, Any]:
    payload = load_checkpoint(cfg.ckpt_path)
    data_cfg = cfg.data if cfg.get("data") is not None else OmegaConf.create(payload["data_config"])
    dataset: RecDataset = instantiate(data_cfg)
    model = load_two_tower(payload)
    meta = export_retrieval(model, dataset, int(cfg.k), cfg.output, {"checkpoint": os.path.abspath(cfg.ckpt_path), "step": int(payload["step"])})
    size_mb = os.path.getsize(cfg.output) / 2**20
    print(f"exported {cfg.output} ({size_mb:.1f} MiB, k={cfg.k}, version {meta['version']})")
    return {"path": os.path.abspath(cfg.output), "size_mb": size_mb, **meta}


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    run_export(cfg)


if __name__ == "__main__":
    main()
