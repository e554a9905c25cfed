"""``silverrec-eval``: full-corpus ranking metrics of a checkpoint, next to most-popular.

    silverrec-eval ckpt_path=runs/demo/checkpoints/step_00002000.pt
    silverrec-eval ckpt_path=... data=movielens data.path=/data/ml-1m   # other data than trained on
    silverrec-eval ckpt_path=... protocol=leave_last_out               # HR@K / NDCG@K / MRR
    silverrec-eval model=runs/demo/serving.pt2 [users=512] [filters='[...]']  # the served artifact

The protocol (:mod:`silverrec.train.protocol`) and cut-offs default to the checkpoint's.

Writes a JSON report (``report_path``) and, unless ``~logger`` is given, TensorBoard scalars.
"""
import json
import os
import sys
from typing import Any, Dict, Optional, Sequence

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from silverrec.atomic_file import write_atomically
from silverrec.data.dataset import RecDataset
from silverrec.train.checkpoint import load_checkpoint
from silverrec.train.distributed import DistContext, init_distributed, shutdown_distributed
from silverrec.train.evaluator import Evaluator
from silverrec.train.multitask_eval import MultiTaskEvaluator, log_multitask
from silverrec.serve import Retriever
from silverrec.train.protocol import EvalConfig
from silverrec.train.served_eval import evaluate_served_details, served_table
from silverrec.train.tb_logging import TensorBoardLogger, make_logger
from silverrec.train.tensorboard_served import log_served
from silverrec.train.trainer import load_two_tower


def evaluate_model(
    model: nn.Module,
    dataset: RecDataset,
    ctx: DistContext,
    ks: Sequence[int] = (10, 50, 100),
    splits: Sequence[str] = ("valid", "test"),
    multitask_split: Optional[str] = "test",
    multitask_users: int = 2000,
    protocol: str = "temporal",
) -> Dict[str, Any]:
    """Exact-retrieval metrics and the most-popular baseline on each split, and the multi-task
    comparison (dot product vs OverArch + Value Model, :mod:`silverrec.train.multitask_eval`).

    Args:
        multitask_split (Optional[str]): split of the multi-task comparison (None: skip it).
        multitask_users (int): users in it (fixed random subset; 0 = all).
        protocol (str): ``temporal`` or ``leave_last_out`` (``dataset`` must carry its split).

    Returns:
        Dict[str, Any]: per split ``{"recall@K": .., "ndcg@K": .., "popularity_recall@K": ..,
        "popularity_ndcg@K": .., "num_users": ..}`` (leave_last_out: ``hr@K``, ``ndcg@K``,
        ``mrr`` and their ``popularity_`` twins), ``"protocol"``, and ``"multitask"`` (see
        :meth:`MultiTaskEvaluator.evaluate`) with its ``"split"``.
    """
    out: Dict[str, Any] = {"protocol": protocol}
    for split in splits:
        ev = Evaluator(dataset, split, ks, protocol=protocol)
        metrics = ev.evaluate(model, ctx)
        metrics.update({f"popularity_{k}": v for k, v in ev.popularity_baseline().items()})
        metrics["num_users"] = int(ev.users.users.size)
        out[split] = metrics
    if multitask_split:
        mt_ks = [k for k in (20, 100, 500) if k <= dataset.items.num_rows] or [dataset.items.num_rows]
        multitask = MultiTaskEvaluator(dataset, multitask_split, ks=mt_ks, max_users=multitask_users).evaluate(model, ctx)
        out["multitask"] = {"split": multitask_split, **multitask}
    return out


def write_json_atomic(path: str, payload: Dict[str, Any]) -> None:
    """Writes JSON through a temporary file and a rename (never a half-written report)."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)

    write_atomically(path, write, ".json")


def log_metrics(logger: Optional[TensorBoardLogger], report: Dict[str, Any], step: int) -> None:
    """Scalars of a report's splits (``valid/recall@100``, ...) and multi-task comparison
    (``test/multitask/like/recall@100/overarch``, ...)."""
    if logger is None:
        return
    for split, metrics in report.items():
        if split == "multitask":
            log_multitask(logger, metrics, step, prefix=f"{metrics['split']}/")
        else:
            logger.scalars({k: v for k, v in metrics.items() if "@" in k or k.endswith("mrr")}, step, prefix=f"{split}/")
    logger.flush()


def served_hparams(retriever: Retriever, section: Dict[str, Any]) -> Dict[str, object]:
    """The hparams of a served evaluation: the artifact's serving settings, backend and users."""
    hp: Dict[str, object] = {f"serving.{k}": ("null" if v is None else v)
                             for k, v in retriever.metadata.get("serving_config", {}).items()}
    hp.update({f"serving.{k}_resolved": retriever.metadata[k] for k in ("n_probe", "num_clusters") if k in retriever.metadata})
    hp.update({"backend": section["backend"], "users": section["num_users"], "version": str(retriever.version)})
    return hp


def run_served_evaluation(cfg: DictConfig) -> Dict[str, Any]:
    """``artifact=PATH``: the served graph against held-out items and the exact model
    (:mod:`silverrec.train.served_eval`); writes ``{"served": ..}`` to ``report_path``."""
    retriever = Retriever(cfg.artifact)
    ckpt = cfg.get("ckpt_path") or retriever.metadata.get("checkpoint")
    if not ckpt or not os.path.isfile(ckpt):
        raise ValueError(f"artifact {cfg.artifact!r} records checkpoint {ckpt!r}, which is not a file: "
                         "give ckpt_path= (the checkpoint it was exported from)")
    payload = load_checkpoint(ckpt)
    data_cfg = cfg.data if cfg.get("data") is not None else OmegaConf.create(payload["data_config"])
    dataset: RecDataset = instantiate(data_cfg)
    model = load_two_tower(payload)
    filters = None if cfg.get("filters") is None else list(cfg.filters)
    section, details = evaluate_served_details(retriever, model, dataset, filters=filters, max_users=int(cfg.users),
                                               batches=[int(b) for b in cfg.batches])
    section["artifact"] = os.path.abspath(cfg.artifact)
    report: Dict[str, Any] = {"served": section,
                              "checkpoint": {"path": os.path.abspath(ckpt), "step": int(payload["step"])}}
    logger = make_logger(cfg.logger.log_dir if cfg.get("logger") else None, True)
    if logger:
        log_served(logger, section, details, int(payload["step"]), served_hparams(retriever, section))
        logger.close()
    write_json_atomic(cfg.report_path, report)
    print(served_table(section))
    return report


def run_evaluation(cfg: DictConfig) -> Dict[str, Any]:
    if cfg.get("artifact"):
        return run_served_evaluation(cfg)
    if not cfg.get("ckpt_path"):
        raise ValueError("silverrec-eval needs ckpt_path=CHECKPOINT or model=ARTIFACT.pt2")
    payload = load_checkpoint(cfg.ckpt_path)
    data_cfg = cfg.data if cfg.get("data") is not None else OmegaConf.create(payload["data_config"])
    dataset: RecDataset = instantiate(data_cfg)
    dataset.validate()
    if dataset.schema.to_dict() != payload["schema"]:
        raise ValueError(
            f"the data set's schema differs from the one checkpoint {cfg.ckpt_path!r} was trained on "
            "(features or vocabularies changed); evaluate on the data it was trained with"
        )
    trained = payload.get("eval_config") or {"protocol": "temporal", "ks": [10, 50, 100]}
    protocol = cfg.get("protocol") or trained["protocol"]
    ks = cfg.get("ks") or (trained["ks"] if protocol == trained["protocol"] else None)
    eval_config = EvalConfig(protocol, None if ks is None else list(ks), bool(trained.get("valid_trains", False)))
    dataset = eval_config.apply(dataset)
    ctx = init_distributed("cpu")
    try:
        model = load_two_tower(payload)
        report: Dict[str, Any] = evaluate_model(model, dataset, ctx, ks=eval_config.cutoffs([10, 50, 100]),
                                                splits=list(cfg.splits), protocol=protocol)
        report["checkpoint"] = {"path": os.path.abspath(cfg.ckpt_path), "step": int(payload["step"])}
        if ctx.is_main:
            logger = make_logger(cfg.logger.log_dir if cfg.get("logger") else None, True)
            log_metrics(logger, {s: report[s] for s in [*cfg.splits, "multitask"] if s in report}, int(payload["step"]))
            if logger:
                logger.close()
            write_json_atomic(cfg.report_path, report)
            print(json.dumps(report, indent=2, sort_keys=True))
        return report
    finally:
        shutdown_distributed()


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    run_evaluation(cfg)


def main() -> None:
    """The ``silverrec-eval`` entry point: ``model=PATH`` becomes ``artifact=PATH`` (Hydra would
    read ``model=`` as a choice of the ``model`` config group) and Hydra takes over."""
    sys.argv = [f"artifact={a[len('model='):]}" if a.startswith("model=") else a for a in sys.argv]
    _hydra_main()


if __name__ == "__main__":
    main()
