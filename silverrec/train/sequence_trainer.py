"""The training loop of the sequence model (``model.user_tower=sequence``).

The same contract as :class:`~silverrec.train.trainer.Trainer` -- ``trainer.max_steps`` steps,
warm-up, periodic validation, TensorBoard, atomic checkpoints in the same format (so
``silverrec-eval`` and ``silverrec-export`` read them) and resume -- over batches of whole user
sequences (:mod:`silverrec.data.sequence_batches`: ``trainer.batch_size`` users per step, a
next-item target at every position). One process: the item-id table of a sequence model is
trained by the dense optimizer (``optim.dense``) with the rest of the model (``optim.sparse`` is not
used), and ``torchrun`` with more than one process is refused.
"""
import dataclasses
import math
import time
from typing import Any, Callable, Dict, List, Optional

import torch
from tqdm import tqdm

from silverrec.data.dataset import RecDataset
from silverrec.data.sequence_batches import SequenceBatches
from silverrec.models.losses import item_log_frequency
from silverrec.models.sequence_train_task import SequenceTrainTask
from silverrec.models.train_task import LossConfig
from silverrec.models.two_tower import TwoTowerConfig, build_two_tower
from silverrec.train import checkpoint as ckpt
from silverrec.train.distributed import DistContext
from silverrec.train.evaluator import Evaluator
from silverrec.train.protocol import EvalConfig
from silverrec.train.tb_logging import TensorBoardLogger
from silverrec.train.trainer import TrainResult, TrainerConfig, lr_factor, set_side_feature_items


class SequenceTrainer:
    """Trains a :class:`~silverrec.models.sequence_two_tower.SequenceTwoTower` (one process).

    Args:
        config (TrainerConfig): loop settings (``batch_size``: users per step).
        ctx (DistContext): must be a single process.
        checkpoint_dir (str): where checkpoints go.
        logger (Optional[TensorBoardLogger]): TensorBoard writer or None.
    """

    def __init__(self, config: TrainerConfig, ctx: DistContext, checkpoint_dir: str, logger: Optional[TensorBoardLogger]) -> None:
        if ctx.world_size != 1:
            raise ValueError(f"model.user_tower=sequence trains in one process; this run has {ctx.world_size} "
                             "(run silverrec-train without torchrun)")
        self.config, self.ctx, self.checkpoint_dir, self.logger = config, ctx, checkpoint_dir, logger

    def build(self, dataset: RecDataset, model_config: TwoTowerConfig, dense: Callable[..., torch.optim.Optimizer],
              loss_config: LossConfig):
        """The train task (model with task rates and side-feature table set) and its optimizer."""
        two_tower = build_two_tower(dataset.schema, model_config)
        train = dataset.split.training
        with torch.no_grad():
            two_tower.task_rates.copy_(torch.tensor([float(dataset.interactions.labels[t][train].mean())
                                                     for t in two_tower.task_names]))
        if two_tower.uses_history:
            set_side_feature_items(two_tower, dataset)
        log_q = item_log_frequency(torch.from_numpy(dataset.interactions.item[train]), dataset.items.num_rows)
        task = SequenceTrainTask(two_tower, log_q, loss_config).to(self.ctx.device)
        return task, dense(task.parameters())

    def fit(self, dataset: RecDataset, model_config: TwoTowerConfig, sparse: Any,
            dense: Callable[..., torch.optim.Optimizer], seed: int = 0, ckpt_path: Optional[str] = None,
            extra: Optional[Dict[str, Any]] = None, loss_config: Optional[LossConfig] = None,
            eval_config: Optional[EvalConfig] = None) -> TrainResult:
        """Trains to ``config.max_steps`` or ``config.max_minutes`` of training, whichever comes first
        (the arguments of :meth:`Trainer.fit`; ``sparse`` is unused)."""
        cfg = self.config
        loss_config = loss_config or LossConfig()
        torch.manual_seed(seed)
        task, opt = self.build(dataset, model_config, dense, loss_config)
        batches = SequenceBatches(dataset, cfg.batch_size, seed=seed)
        eval_config = eval_config or EvalConfig()
        validator = Evaluator(dataset, "valid", eval_config.cutoffs(cfg.ks), max_users=cfg.eval_max_users,
                              protocol=eval_config.protocol) if cfg.eval_every else None
        meta = {"schema": dataset.schema.to_dict(), "model_config": dataclasses.asdict(model_config), **(extra or {})}
        start = 0
        resume_from = ckpt_path or (ckpt.latest_checkpoint(self.checkpoint_dir) if cfg.resume else None)
        if resume_from:
            start = self._restore(resume_from, task, opt, meta)
        base_lr = [g["lr"] for g in opt.param_groups]
        history: List[Dict[str, float]] = []
        bar = tqdm(total=cfg.max_steps, initial=start, desc="train", disable=not cfg.progress, dynamic_ncols=True)
        step, last_path = start, resume_from or ""
        t_last, seq_since = time.perf_counter(), 0
        deadline = time.perf_counter() + 60 * cfg.max_minutes if cfg.max_minutes else math.inf
        task.train()
        while step < cfg.max_steps and time.perf_counter() < deadline:
            epoch, in_epoch = divmod(step, batches.steps_per_epoch)
            for batch in batches.epoch(epoch, start_step=in_epoch):
                # the share of the run done: of max_steps, or of max_minutes when that comes first
                progress = step / cfg.max_steps
                if cfg.max_minutes:
                    progress = max(progress, 1.0 - (deadline - time.perf_counter()) / (60 * cfg.max_minutes))
                f = lr_factor(cfg, step, progress)
                for g, lr in zip(opt.param_groups, base_lr):
                    g["lr"] = lr * f
                task.reseed(seed * 1_000_003 + step)
                loss, parts = task(batch)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                seq_since += cfg.batch_size
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(f"training loss became {value} at step {step}; lower the learning rates")
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    dt = time.perf_counter() - t_last
                    scalars = {"train/loss": value, "train/lr": opt.param_groups[-1]["lr"],
                               "train/sequences_per_s": seq_since / max(dt, 1e-9)}
                    scalars.update({f"train/loss_{k}": float(p) for k, p in parts.items()})
                    bar.set_postfix(loss=f"{value:.3f}", seq_s=f"{scalars['train/sequences_per_s']:.0f}")
                    if self.logger:
                        self.logger.scalars(scalars, step)
                    t_last, seq_since = time.perf_counter(), 0
                bar.update(1)
                if validator and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                    history.append(self._validate(validator, task, step))
                out_of_time = time.perf_counter() >= deadline
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.max_steps or out_of_time:
                    last_path = self._save(task, opt, step, meta)
                if step >= cfg.max_steps or out_of_time:
                    if out_of_time:
                        print(f"trainer.max_minutes={cfg.max_minutes} reached at step {step}", flush=True)
                    break
        bar.close()
        task.eval()
        return TrainResult(step=step, start_step=start, checkpoint=last_path, model=task, history=history)

    def _validate(self, validator: Evaluator, task: SequenceTrainTask, step: int) -> Dict[str, float]:
        metrics = validator.evaluate(task.two_tower, self.ctx)
        if not self.config.progress:  # no bar to show progress: one line per validation
            print(f"step {step}: valid " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)
        if self.logger:
            self.logger.scalars(metrics, step, prefix="valid/")
            self.logger.flush()
        return {"step": step, **metrics}

    def _save(self, task: SequenceTrainTask, opt: torch.optim.Optimizer, step: int, meta: Dict[str, Any]) -> str:
        path = ckpt.step_path(self.checkpoint_dir, step)
        payload = {"model": {k: v.detach().cpu() for k, v in task.two_tower.state_dict().items()},
                   "optimizer": opt.state_dict(), "step": step, "world_size": 1, **meta}
        ckpt.save_checkpoint(path, payload)
        ckpt.prune_checkpoints(self.checkpoint_dir, self.config.keep_checkpoints)
        return path

    def _restore(self, path: str, task: SequenceTrainTask, opt: torch.optim.Optimizer, meta: Dict[str, Any]) -> int:
        payload = ckpt.load_checkpoint(path)
        for key in ("schema", "model_config"):
            if payload[key] != meta[key]:
                raise ValueError(f"checkpoint {path!r} was made with a different {key}; start a new run folder "
                                 "(hydra.run.dir=...) or set trainer.resume=false")
        task.two_tower.load_state_dict(payload["model"])
        opt.load_state_dict(payload["optimizer"])
        print(f"resumed from {path} at step {payload['step']}")
        return int(payload["step"])

