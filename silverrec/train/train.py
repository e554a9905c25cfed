"""``silverrec-train``: the Hydra entry point (configs in ``silverrec/conf``).

    silverrec-train                                   # default synthetic world
    silverrec-train data=movielens data.path=/data/ml-1m
    silverrec-train data=recbole data.path=/data/ml-1m eval.protocol=leave_last_out
    silverrec-train data=recbole data.path=/data/ml-1m eval.protocol=leave_last_out model.user_tower=sequence
    torchrun --standalone --nproc_per_node=2 -m silverrec.train.train trainer.num_threads=1

Trains with TorchRec DistributedModelParallel, validates periodically, then evaluates the
final model on valid and test under ``eval.protocol`` (exact full-corpus retrieval next to
most-popular), logs to TensorBoard and writes ``report.json`` in the run folder. A model config
without a ``value_formula`` takes the data set's default (:meth:`RecDataset.default_value_formula`).
"""
import dataclasses
import json
import os
import time
from typing import Any, Dict, Optional

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from silverrec.data.dataset import RecDataset
from silverrec.models.two_tower import TwoTowerConfig
from silverrec.models.value_formula import FormulaError, parse_formula
from silverrec.train.distributed import broadcast_object, init_distributed, shutdown_distributed
from silverrec.train.evaluate import evaluate_model, log_metrics, write_json_atomic
from silverrec.train.malloc_tuning import keep_freed_memory
from silverrec.train.multitask_eval import multitask_table
from silverrec.train.optim import check_dense_optimizer
from silverrec.train.protocol import EvalConfig
from silverrec.train.tb_logging import flatten, make_logger
from silverrec.train.tensorboard_training import log_training_end, recall_curves
from silverrec.train.sequence_trainer import SequenceTrainer
from silverrec.train.trainer import Trainer, TrainerConfig


def model_config_for(cfg: DictConfig, dataset: RecDataset) -> TwoTowerConfig:
    """``cfg.model`` with its value formula resolved against the data: None takes the data set's
    default; a formula naming a task the data lacks raises naming the tasks it has.

    Raises:
        FormulaError: ``model.value_formula`` does not parse against the data's tasks.
    """
    config: TwoTowerConfig = instantiate(cfg.model)
    if config.value_formula is None:
        return dataclasses.replace(config, value_formula=dataset.default_value_formula())
    try:
        parse_formula(config.value_formula, dataset.schema.task_names)
    except FormulaError as e:
        raise FormulaError(f"model.value_formula: {e.args[0]}; this data set's tasks are "
                           f"{', '.join(dataset.schema.task_names)}", e.column, e.formula) from None
    return config


def run_training(cfg: DictConfig, dataset: Optional[RecDataset] = None) -> Dict[str, Any]:
    """Trains, evaluates and reports; returns the report (on every rank).

    ``dataset`` is the already instantiated ``cfg.data`` when the caller needs it too (the demo).
    """
    trainer_cfg: TrainerConfig = instantiate(cfg.trainer)
    dense_optimizer = check_dense_optimizer(instantiate(cfg.optim.dense), "optim.dense")  # before any data is read
    if trainer_cfg.num_threads:
        torch.set_num_threads(trainer_cfg.num_threads)
    keep_freed_memory(trainer_cfg.malloc_keep_mib)
    ctx = init_distributed(trainer_cfg.device)
    try:
        # every rank must write to rank 0's run folder (hydra's date-stamped names can differ)
        paths = broadcast_object(OmegaConf.to_container(cfg.paths, resolve=True), ctx)
        log_dir = broadcast_object(cfg.logger.log_dir if cfg.get("logger") else None, ctx)
        if dataset is None:
            dataset = instantiate(cfg.data)
        dataset.validate()
        eval_config: EvalConfig = instantiate(cfg.eval) if cfg.get("eval") is not None else EvalConfig()
        dataset = eval_config.apply(dataset)
        ks = eval_config.cutoffs(trainer_cfg.ks)
        model_config = model_config_for(cfg, dataset)
        logger = make_logger(log_dir, ctx.is_main)
        trainer_class = SequenceTrainer if model_config.user_tower == "sequence" else Trainer
        trainer = trainer_class(trainer_cfg, ctx, paths["checkpoint_dir"], logger)
        t0, cpu0 = time.perf_counter(), time.process_time()
        result = trainer.fit(
            dataset,
            model_config,
            instantiate(cfg.optim.sparse),
            dense_optimizer,
            seed=cfg.seed,
            ckpt_path=cfg.ckpt_path,
            extra={"data_config": OmegaConf.to_container(cfg.data, resolve=True),
                   "eval_config": {"protocol": eval_config.protocol, "ks": ks, "valid_trains": eval_config.valid_trains}},
            loss_config=instantiate(cfg.loss),
            eval_config=eval_config,
        )
        train_seconds, train_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        task = getattr(result.model, "module", result.model)  # DistributedModelParallel or the plain task
        report: Dict[str, Any] = evaluate_model(task.two_tower, dataset, ctx, ks=ks,
                                                protocol=eval_config.protocol)
        # recall@K against K (1..500) and the projector's embeddings: every rank (the towers gather)
        curves = recall_curves(task.two_tower, dataset, ctx, protocol=eval_config.protocol)
        report["curves"] = curves.report
        report["train"] = {
            "steps": result.step,
            "start_step": result.start_step,
            "seconds": round(train_seconds, 1),
            "cpu_seconds": round(train_cpu, 1),  # CPU time of this process, all its threads (a loaded machine's wall time misleads)
            "world_size": ctx.world_size,
            "checkpoint": os.path.abspath(result.checkpoint),
            "validation_history": result.history,
        }
        if ctx.is_main:
            log_metrics(logger, {s: report[s] for s in ("valid", "test", "multitask")}, result.step)
            if logger:
                log_training_end(logger, dataset, curves, report.get("multitask"), result.step)
                hp = flatten({"model": dataclasses.asdict(model_config), "loss": dataclasses.asdict(instantiate(cfg.loss)),
                              "trainer": dataclasses.asdict(trainer_cfg), "eval": dataclasses.asdict(eval_config)})
                hp.update({"seed": cfg.seed, "world_size": ctx.world_size})
                final = {f"test/{k}": v for k, v in report["test"].items() if k.startswith(("recall@", "hr@"))}
                value = report["multitask"].get("value_recall@100", {})
                final.update({f"test/value_recall@100/{kind}": v for kind, v in value.items() if v is not None})
                logger.hparams(hp, final)
                logger.close()
            write_json_atomic(paths["report_path"], report)
            print(json.dumps({s: {k: round(v, 4) for k, v in report[s].items()} for s in ("valid", "test")}, indent=2))
            print("\n".join("  ".join(f"{c:<18}" for c in row) for row in multitask_table(report["multitask"])))
        return report
    finally:
        shutdown_distributed()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_training(cfg)


if __name__ == "__main__":
    main()
