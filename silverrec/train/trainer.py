"""The training loop: DistributedModelParallel, fused + dense optimizers, validation,
TensorBoard, atomic checkpoints and resume.
"""
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingType
from tqdm import tqdm

from silverrec.data.batching import FeatureBatcher, TrainBatches
from silverrec.data.dataset import RecDataset
from silverrec.models.losses import item_log_frequency
from silverrec.models.train_task import CandidateSearch, LossConfig, TwoTowerTrainTask
from silverrec.models.two_tower import TwoTower, TwoTowerConfig, build_two_tower
from silverrec.retrieval.ivf_index import IVFInt8Index
from silverrec.train import checkpoint as ckpt
from silverrec.train.distributed import DistContext, broadcast_object
from silverrec.train.evaluator import Evaluator, embed_items
from silverrec.train.loss_watch import LossWatch
from silverrec.train.optim import SparseOptimizerConfig, apply_sparse_optimizer, combined_optimizer
from silverrec.train.protocol import EvalConfig
from silverrec.train.tb_logging import TensorBoardLogger


def ivf_candidate_search(bank: torch.Tensor) -> CandidateSearch:
    """The training task's candidate search: an :class:`~silverrec.retrieval.IVFInt8Index` over
    the item bank (default build and probe settings), the index that serving publishes.

    Args:
        bank (Tensor): float32 ``[N, D]`` item embeddings, row ``r`` = item row ``r``.

    Returns:
        CandidateSearch: ``search(queries, k)``, queries float32 ``[B, D]`` -> int64 ``[B, k]``
        bank rows, best first, ``-1`` padding.

    Example::

        >>> search = ivf_candidate_search(torch.eye(4))
        >>> search(torch.tensor([[0.0, 0.0, 1.0, 0.0]]), 1).tolist()
        [[2]]
    """
    index = IVFInt8Index.build(bank)

    def search(queries: torch.Tensor, k: int) -> torch.Tensor:
        # on the bank's device; check=False: no NaN check, which on a GPU would read the device every step
        return index.search(queries, k, check=False).ids

    return search


LR_DECAYS = ("none", "cosine")


def lr_factor(config: "TrainerConfig", step: int, progress: float) -> float:
    """The dense learning rate of ``step`` (0-based) relative to ``optim.dense.lr``: a linear
    warm-up over ``config.warmup_steps``, times ``(1 + cos(pi * progress)) / 2`` with
    ``lr_decay=cosine``, ``progress`` in [0, 1] the share of the run done.

    Example::

        >>> cfg = TrainerConfig(warmup_steps=10, lr_decay="cosine")
        >>> [round(lr_factor(cfg, s, p), 3) for s, p in ((0, 0.0), (9, 0.0), (50, 0.5), (99, 1.0))]
        [0.1, 1.0, 0.5, 0.0]
    """
    f = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    if config.lr_decay == "cosine":
        f *= 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return f


@dataclass
class TrainerConfig:
    """Training-loop settings (YAML ``trainer:``).

    Args:
        max_steps (int): optimizer steps in total (epochs follow from the data size).
        batch_size (int): global batch size (split evenly over the processes).
        warmup_steps (int): linear warm-up of the dense learning rate.
        eval_every (int): validate every this many steps (0 = only at the end).
        eval_max_users (int): users in the periodic validation (fixed random subset; 0 = all).
        checkpoint_every (int): checkpoint every this many steps (and always at the end).
        keep_checkpoints (int): most recent checkpoints kept.
        log_every (int): TensorBoard scalar interval in steps.
        ks (List[int]): recall/NDCG cut-offs.
        device (str): ``cpu`` or ``cuda``.
        resume (bool): resume from the latest checkpoint of the run folder if there is one.
        progress (bool): show a tqdm progress bar (rank 0).
        num_threads (int): torch intra-op threads per process (0: torch's default). Applied by
            the entry point; under ``torchrun`` use 1 per process on a small machine.
        max_minutes (float): stop after this much training time even before ``max_steps`` (0:
            no limit; the sequence trainer only, where one process decides alone).
        lr_decay (str): after the warm-up, ``none`` keeps the dense learning rate, ``cosine``
            lowers it to 0 along a half cosine over the run (see :func:`lr_factor`).
        malloc_keep_mib (int): glibc's malloc serves blocks up to this many MiB (at most 32) from
            its heap and keeps freed memory for reuse (:mod:`silverrec.train.malloc_tuning`;
            about 10% faster sequence-tower steps); 0 leaves malloc as it is. Applied by the
            entry point.
    """

    max_steps: int = 2000
    batch_size: int = 1024
    warmup_steps: int = 100
    eval_every: int = 500
    eval_max_users: int = 2000
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 20
    ks: List[int] = field(default_factory=lambda: [10, 50, 100])
    device: str = "cpu"
    resume: bool = True
    progress: bool = True
    num_threads: int = 0
    max_minutes: float = 0.0
    lr_decay: str = "none"
    malloc_keep_mib: int = 32

    def __post_init__(self) -> None:
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"trainer.lr_decay must be one of {list(LR_DECAYS)}, got {self.lr_decay!r}")
        if not self.max_minutes >= 0:
            raise ValueError(f"trainer.max_minutes must be >= 0, got {self.max_minutes}")
        for name in ("max_steps", "batch_size", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "eval_max_users", "malloc_keep_mib"):
            if getattr(self, name) < 0:
                raise ValueError(f"trainer.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` leaves behind.

    Args:
        step (int): the last step.
        start_step (int): the step this call started from (> 0 when it resumed a checkpoint).
        checkpoint (str): path of the final checkpoint.
        model (nn.Module): the trained train task (DistributedModelParallel of a TwoTowerTrainTask, or a
            plain SequenceTrainTask).
        history (List[Dict[str, float]]): periodic validation metrics, with their step.
    """

    step: int
    start_step: int
    checkpoint: str
    model: torch.nn.Module
    history: List[Dict[str, float]]


class Trainer:
    """Trains a two-tower model with TorchRec DistributedModelParallel.

    Args:
        config (TrainerConfig): loop settings.
        ctx (DistContext): process group context.
        checkpoint_dir (str): where checkpoints go (written by rank 0).
        logger (Optional[TensorBoardLogger]): TensorBoard writer (rank 0) or None.
    """

    def __init__(self, config: TrainerConfig, ctx: DistContext, checkpoint_dir: str, logger: Optional[TensorBoardLogger]) -> None:
        self.config = config
        self.ctx = ctx
        self.checkpoint_dir = checkpoint_dir
        self.logger = logger

    def build(
        self,
        dataset: RecDataset,
        model_config: TwoTowerConfig,
        sparse: SparseOptimizerConfig,
        dense: Callable[..., torch.optim.Optimizer],
        loss_config: Optional[LossConfig] = None,
    ):
        """The sharded train task and its combined optimizer."""
        two_tower = build_two_tower(dataset.schema, model_config, device=torch.device("meta"))
        train = dataset.split.training
        with torch.no_grad():
            two_tower.task_rates.copy_(torch.tensor([float(dataset.interactions.labels[t][train].mean()) for t in two_tower.task_names]))
        if two_tower.uses_history:  # the side features' item attribute table
            set_side_feature_items(two_tower, dataset)
        train_items = torch.from_numpy(dataset.interactions.item[train])
        task = TwoTowerTrainTask(two_tower, item_log_frequency(train_items, dataset.items.num_rows), loss_config,
                                 search_builder=ivf_candidate_search, history_width=dataset.schema.history_length)
        apply_sparse_optimizer(two_tower.ebc.parameters(), sparse)
        plan = sharding_plan(task, two_tower.ebc.embedding_bag_configs(), self.ctx)
        model = DistributedModelParallel(task, device=self.ctx.device, plan=plan)
        return model, combined_optimizer(model, dense)

    def fit(
        self,
        dataset: RecDataset,
        model_config: TwoTowerConfig,
        sparse: SparseOptimizerConfig,
        dense: Callable[..., torch.optim.Optimizer],
        seed: int = 0,
        ckpt_path: Optional[str] = None,
        extra: Optional[Dict[str, Any]] = None,
        loss_config: Optional[LossConfig] = None,
        eval_config: Optional[EvalConfig] = None,
    ) -> TrainResult:
        """Trains to ``config.max_steps``, resuming from ``ckpt_path`` or the latest checkpoint.

        Args:
            extra (Optional[Dict[str, Any]]): JSON-able metadata stored in every checkpoint
                (e.g. the data config, so evaluation and export can rebuild the data).
            loss_config (Optional[LossConfig]): task weights and negatives (None: defaults).
            eval_config (Optional[EvalConfig]): protocol and cut-offs of the periodic validation
                (None: temporal, ``config.ks``); ``dataset`` must already carry its split.
        """
        cfg, ctx = self.config, self.ctx
        if cfg.max_minutes:
            raise ValueError(f"trainer.max_minutes={cfg.max_minutes} is supported with model.user_tower=sequence "
                             "only; set trainer.max_steps instead")
        loss_config = loss_config or LossConfig()
        torch.manual_seed(seed)
        model, opt = self.build(dataset, model_config, sparse, dense, loss_config)
        tasks = list(dataset.schema.task_names)
        batches = TrainBatches(dataset, cfg.batch_size, seed=seed, rank=ctx.rank, world_size=ctx.world_size)
        eval_config = eval_config or EvalConfig()
        validator = Evaluator(dataset, "valid", eval_config.cutoffs(cfg.ks), max_users=cfg.eval_max_users,
                              protocol=eval_config.protocol) if cfg.eval_every else None
        meta = {"schema": dataset.schema.to_dict(), "model_config": dataclasses.asdict(model_config), **(extra or {})}

        start = 0
        resume_from = ckpt_path or (ckpt.latest_checkpoint(self.checkpoint_dir) if cfg.resume else None)
        resume_from = broadcast_object(resume_from, ctx)
        if resume_from:
            start = self._restore(resume_from, model, opt, meta)

        base_lr = [g["lr"] for g in opt.param_groups]
        history: List[Dict[str, float]] = []
        bar = tqdm(total=cfg.max_steps, initial=start, desc="train", disable=not (cfg.progress and ctx.is_main), dynamic_ncols=True)
        step, last_path = start, resume_from or ""
        t_last, ex_since = time.perf_counter(), 0
        watch = LossWatch()
        model.train()
        while step < cfg.max_steps:
            epoch, in_epoch = divmod(step, batches.steps_per_epoch)
            for batch in batches.epoch(epoch, start_step=in_epoch):
                self._set_lr(opt, base_lr, step)
                if loss_config.needs_index and (step % loss_config.hard_negative_refresh == 0 or model.module.negative_search is None):
                    self._refresh_negatives(model, dataset)  # also at the start (and on resume): "pool" mode needs it
                model.module.reseed(seed * 1_000_003 + step)
                labels = torch.stack([batch.labels[t] for t in tasks], dim=1)
                loss, parts = model(batch.features.to(ctx.device), batch.item_rows.to(ctx.device), labels.to(ctx.device))
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                ex_since += cfg.batch_size
                watch.update(loss, step)  # no host read per step: the loss is read every log_every steps
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    watch.check()
                    loss_value = float(loss.detach())
                    dt = time.perf_counter() - t_last
                    scalars = {"train/loss": loss_value, "train/lr": opt.param_groups[-1]["lr"], "train/examples_per_s": ex_since / max(dt, 1e-9)}
                    scalars.update({f"train/loss_{k}": float(p) for k, p in parts.items()})
                    bar.set_postfix(loss=f"{loss_value:.3f}", ex_s=f"{scalars['train/examples_per_s']:.0f}")
                    if self.logger:
                        self.logger.scalars(scalars, step)
                    t_last, ex_since = time.perf_counter(), 0
                bar.update(1)
                if validator and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                    watch.check()
                    history.append(self._validate(validator, model, step))
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.max_steps:
                    watch.check()  # never a checkpoint of a diverged model
                    last_path = self._save(model, opt, step, meta)
                if step >= cfg.max_steps:
                    break
        bar.close()
        return TrainResult(step=step, start_step=start, checkpoint=last_path, model=model, history=history)

    def _set_lr(self, opt, base_lr: List[float], step: int) -> None:
        f = lr_factor(self.config, step, step / self.config.max_steps)
        for g, lr in zip(opt.param_groups, base_lr):
            g["lr"] = lr * f

    def _refresh_negatives(self, model, dataset: RecDataset) -> None:
        """Rebuilds the negative bank and its candidate search from the current item embeddings (every rank)."""
        batcher = FeatureBatcher(dataset.schema, dataset.users, dataset.items)
        was_training = model.training
        model.eval()
        try:
            items = embed_items(model.module.two_tower, batcher, dataset.items.num_rows, self.ctx)
        finally:
            model.train(was_training)
        model.module.set_negative_bank(items)

    def _validate(self, validator: Evaluator, model, step: int) -> Dict[str, float]:
        metrics = validator.evaluate(model.module.two_tower, self.ctx)
        if self.logger:
            self.logger.scalars(metrics, step, prefix="valid/")
            self.logger.flush()
        return {"step": step, **metrics}

    def _save(self, model, opt, step: int, meta: Dict[str, Any]) -> str:
        state = ckpt.gather_state(model.state_dict(), self.ctx)
        opt_state = ckpt.gather_state(opt.state_dict(), self.ctx)
        path = ckpt.step_path(self.checkpoint_dir, step)
        if self.ctx.is_main:
            prefix = "two_tower."
            payload = {
                "model": {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
                "optimizer": opt_state,
                "step": step,
                "world_size": self.ctx.world_size,
                **meta,
            }
            ckpt.save_checkpoint(path, payload)
            ckpt.prune_checkpoints(self.checkpoint_dir, self.config.keep_checkpoints)
        if dist.is_initialized():
            dist.barrier()
        return path

    def _restore(self, path: str, model, opt, meta: Dict[str, Any]) -> int:
        payload = ckpt.load_checkpoint(path)
        for key in ("schema", "model_config"):
            if payload[key] != meta[key]:
                raise ValueError(
                    f"checkpoint {path!r} was made with a different {key}; start a new run folder "
                    f"(hydra.run.dir=...) or set trainer.resume=false"
                )
        state = model.state_dict()
        full = {f"two_tower.{k}": v for k, v in payload["model"].items()}
        model.load_state_dict(ckpt.scatter_into(state, full, "model"))
        # torchrec's KeyedOptimizer loads only into existing state; dense optimizers create theirs
        # lazily on the first step, so materialise it (a zero-gradient step) before loading
        opt.init_state()
        opt.zero_grad()
        opt.load_state_dict(ckpt.scatter_into(opt.state_dict(), payload["optimizer"], "optimizer"))
        if self.ctx.is_main:
            print(f"resumed from {path} at step {payload['step']}")
        return int(payload["step"])


def sharding_plan(module: torch.nn.Module, tables, ctx: DistContext):
    """TorchRec's plan with every table on the fused kernel (table- or row-wise sharded).

    Without the constraint the planner replicates small tables (data-parallel, updated by the
    dense optimizer) and which tables those are depends on the number of processes; forcing
    the fused kernel keeps one optimizer per table on any world size, so a checkpoint resumes
    on 1 process what 2 processes wrote and vice versa.
    """
    constraints = {
        t.name: ParameterConstraints(
            sharding_types=[ShardingType.TABLE_WISE.value, ShardingType.ROW_WISE.value],
            compute_kernels=[EmbeddingComputeKernel.FUSED.value],
        )
        for t in tables
    }
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=ctx.world_size, compute_device=ctx.device.type), constraints=constraints
    )
    sharders = [EmbeddingBagCollectionSharder()]
    if ctx.world_size == 1 and not dist.is_initialized():
        return planner.plan(module, sharders)
    return planner.collective_plan(module, sharders, dist.group.WORLD)


def set_side_feature_items(two_tower: TwoTower, dataset: RecDataset) -> None:
    """Fills the item attribute tables of an OverArch with side features from ``dataset`` (its
    item feature columns and training interaction counts)."""
    side = two_tower.over_arch.side_features
    counts = np.bincount(dataset.interactions.item[dataset.split.training], minlength=dataset.items.num_rows)
    side.set_items_from(dataset.schema, dataset.items.columns, counts)


def load_two_tower(payload: Dict[str, Any]) -> TwoTower:
    """A plain (unsharded) :class:`TwoTower` with a checkpoint's weights, in eval mode."""
    from silverrec.schema import Schema

    schema = Schema.from_dict(payload["schema"])
    model = build_two_tower(schema, TwoTowerConfig(**payload["model_config"]))
    model.load_state_dict(payload["model"])
    return model.eval()
