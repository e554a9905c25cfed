"""Headroom of the OverArch + Value Model: how much can any re-scorer gain over dot-product retrieval?

On the synthetic world the hidden state is known, so an *oracle* can rank candidates by the true
expected value of each one. This script evaluates, on the test split and with the very candidate
pool and metric of :class:`~silverrec.train.multitask_eval.MultiTaskEvaluator` (2000 users, the
top-500 of each task merged), value-weighted recall@K of:

* ``dot``          the trained model, Value Model over dot-product predictions;
* ``overarch``     the trained model, Value Model over OverArch predictions;
* ``oracle_click`` the oracle's click logit alone over the same pool (what a perfect click model
                   gets without knowing the other labels);
* ``oracle``       the oracle re-ranker over the same pool: per candidate i of user u,
                   ``P(click) = task_rates[click] * softmax_pool(true click logit)`` (normalised as
                   the model's predictions are), task predictions ``P(click) * E[label | click]``
                   with E[like|click], E[share|click], E[watch|click] from the label formulas of
                   :func:`silverrec.data.synthetic._labels` (like marginalised out of share and
                   watch, watch's clipped Gaussian noise integrated exactly), then the Value Model;
* ``dot_no_impossible`` / ``dot_year_rule``: the dot ranking with candidates removed: those the
                   user can never engage with (true click logit about -1e4: a category below the
                   user's threshold, or a release after the user's active period began), or those
                   released after the latest release among the user's seen items (an observable
                   rule a feature-aware re-scorer could learn);
* ``oracle@own``   the same oracle over its own pool (its top-P by expected value over the whole
                   catalogue, seen items excluded): the ceiling of retrieval + ranking.

Realized labels are Bernoulli draws and a user's test items are a random subset of what they
engage with, so even the oracle is far from 1.0; ``oracle / dot - 1`` is the most any re-scorer
of the pool can gain. Per-task recall@K of the oracle (ranking by ``P(click) * E[label | click]``)
is printed too.

    .venv/bin/python benchmarks/multitask_headroom.py                       # runs/demo's latest checkpoint
    .venv/bin/python benchmarks/multitask_headroom.py --ckpt /tmp/x/checkpoints/step_00002000.pt --json out.json

Runs in about 2-3 minutes on 2 cores (generating the default world is half of it).
"""
import argparse
import dataclasses
import glob
import json
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from silverrec.data.synthetic import SyntheticConfig, generate_with_world
from silverrec.data.synthetic_world import World, creator_items, recency_preference
from silverrec.models.two_tower import TwoTower
from silverrec.train.checkpoint import load_checkpoint
from silverrec.train.distributed import local_context
from silverrec.train.multitask_eval import MultiTaskEvaluator, top_rows
from silverrec.train.trainer import load_two_tower

from markdown_table import print_table  # a module beside this script (the script's folder is sys.path[0])

_SECONDS_PER_YEAR = 365.2425 * 86400
_LABEL_TASKS = ("click", "like", "share", "watch")


def _sigmoid(x: Tensor) -> Tensor:
    return torch.sigmoid(x)


def _expected_clip01(mu: Tensor, sigma: float) -> Tensor:
    """E[clip(mu + sigma Z, 0, 1)], Z ~ N(0, 1), elementwise."""
    n = torch.distributions.Normal(0.0, 1.0)
    a, b = (0.0 - mu) / sigma, (1.0 - mu) / sigma
    pdf = lambda x: torch.exp(-0.5 * x * x) / (2 * np.pi) ** 0.5  # noqa: E731
    inside = mu * (n.cdf(b) - n.cdf(a)) + sigma * (pdf(a) - pdf(b))  # E[Y; 0 < Y < 1]
    return inside + (1.0 - n.cdf(b))  # + P(Y > 1)


class WorldOracle:
    """True click logits and expected labels given a click, from a synthetic world's latents.

    Args:
        world (World): the world the data set was generated from.
        config (SyntheticConfig): its config.

    Call Args:
        users (np.ndarray): int64 [c] user rows.

    Returns:
        Tensor: float32 [c, N, 4]: the click logit, E[like | click], E[share | click],
        E[watch | click] of every item (never-engaged pairs have logits about -1e4).
    """

    def __init__(self, world: World, config: SyntheticConfig) -> None:
        self.world, self.config = world, config
        lat = world.latents
        self.creators = creator_items(lat.item_creator, config.num_creators)
        self.indicator = dataclasses.replace(lat, loyalty_bonus=1.0)  # add_loyalty adds 1: the loyal indicator
        self.n_tags = torch.from_numpy(np.diff(world.item_tags[1]).astype(np.float32))
        self.quality = torch.from_numpy(lat.item_quality)
        self.label_item = torch.from_numpy(lat.label_item)

    def __call__(self, users: np.ndarray) -> Tensor:
        lat, cfg = self.world.latents, self.config
        logit = lat.logits(users, full=True)  # [c, N]
        m = 3.0 * torch.from_numpy(lat.label_user[users]) @ self.label_item.T  # [c, N]
        loyal = torch.zeros_like(m)
        self.indicator.add_loyalty(loyal, users, self.creators)
        age = (1970.0 + self.world.active_start[users] / _SECONDS_PER_YEAR - cfg.year_min)[:, None] - lat.item_year[None, :]
        recency = torch.from_numpy(recency_preference(lat.user_type[users][:, None], age) / 1.5).float()
        q = self.quality[None, :]
        p_like = _sigmoid(-1.3 + 1.8 * torch.tanh(1.5 * m) + 0.8 * q + 1.5 * loyal + recency)
        s = -5.0 + 2.0 * m.clamp_min(0) * (q > 0) + 1.0 * loyal
        e_share = p_like * _sigmoid(s + 1.2) + (1 - p_like) * _sigmoid(s)
        w = -0.4 + 1.2 * m - 0.4 * (self.n_tags[None, :] - 3)
        e_watch = p_like * _expected_clip01(_sigmoid(w + 0.8), 0.1) + (1 - p_like) * _expected_clip01(_sigmoid(w), 0.1)
        return torch.stack([logit, p_like, e_share, e_watch], dim=-1)


def oracle_task_scores(model: TwoTower, expectations: Tensor, valid: Tensor) -> Tensor:
    """Oracle task predictions [c, M, T] of a pool, normalised as the model's: P(click) =
    ``task_rates[click]`` x softmax over the valid candidates of the true click logit; task t's
    prediction is P(click) x E[label_t | click]. ``expectations`` [c, M, 4] from :class:`WorldOracle`."""
    tasks = model.task_names
    unknown = [t for t in tasks if t not in _LABEL_TASKS]
    if unknown:
        raise ValueError(f"the oracle knows the tasks {_LABEL_TASKS}, the model has {unknown}")
    rates = model.task_rates.float().cpu()
    p_click = torch.softmax(expectations[..., 0].masked_fill(~valid, float("-inf")), dim=1).nan_to_num(0.0)
    p_click = p_click * rates[tasks.index("click")] if "click" in tasks else p_click
    cols = [p_click if t == "click" else p_click * expectations[..., _LABEL_TASKS.index(t)] for t in tasks]
    return torch.stack(cols, dim=-1)


class HeadroomEvaluator(MultiTaskEvaluator):
    """:class:`MultiTaskEvaluator` plus oracle rankings (``oracle``, ``oracle_click``); with
    ``own_pool`` the pool is the oracle's top-P by expected value instead of the model's lists.

    Args:
        oracle (WorldOracle): the world's oracle.
        own_pool (bool): rank the oracle's own pool.
        kwargs: :class:`MultiTaskEvaluator`'s arguments.
    """

    def __init__(self, oracle: WorldOracle, own_pool: bool, model: TwoTower, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.oracle, self.own_pool, self.model = oracle, own_pool, model
        self._memo: Tuple[Optional[np.ndarray], Optional[Tensor]] = (None, None)
        self.impossible_in_top = 0.0  # summed over users: share of impossible items in the dot value top-100

    def _expectations(self, rows: np.ndarray) -> Tensor:
        if self._memo[0] is None or not np.array_equal(self._memo[0], rows):
            self._memo = (rows.copy(), self.oracle(self.users.users[rows]))
        return self._memo[1]

    def candidate_pool(self, rows: np.ndarray, u: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        if not self.own_pool:
            return super().candidate_pool(rows, u, v)
        e = self._expectations(rows)  # [c, N, 4]
        value = self.model.value(oracle_task_scores(self.model, e, torch.ones(e.shape[:2], dtype=torch.bool)),
                                 torch.ones(e.shape[:2], dtype=torch.bool))  # [c, N]
        seen = self.users.seen.take(rows)
        value[torch.from_numpy(np.repeat(np.arange(rows.size), seen.lengths)), torch.from_numpy(seen.values)] = float("-inf")
        top_v, pool = torch.topk(value, self.pool_per_task, dim=1)
        return pool.masked_fill(torch.isneginf(top_v), -1), ~torch.isneginf(top_v)

    def rankings(self, model: TwoTower, rows: np.ndarray, u: Tensor, v: Tensor, pool: Tensor, valid: Tensor,
                 k: int) -> Dict[Tuple[str, str], Tensor]:
        out = super().rankings(model, rows, u, v, pool, valid, k)
        e = self._expectations(rows)
        e_pool = e.gather(1, pool.clamp_min(0).unsqueeze(-1).expand(-1, -1, e.shape[-1]))  # [c, M, 4]
        scores = oracle_task_scores(model, e_pool, valid)  # [c, M, T]
        out[("oracle", "task")] = top_rows(scores.masked_fill(~valid.unsqueeze(-1), float("-inf")), pool, k)
        out[("oracle", "value")] = top_rows(model.value(scores, valid).unsqueeze(-1), pool, k)
        out[("oracle_click", "value")] = top_rows(e_pool[..., :1].masked_fill(~valid.unsqueeze(-1), float("-inf")), pool, k)
        # the dot model's Value Model ranking with candidates removed: the impossible ones (true click
        # logit about -1e4: a blocked category or a release after the user's period began), or those
        # released after the latest release year among the user's seen items (an observable rule)
        dot = model.task_logits(u, v[pool.clamp_min(0)], over_arch=False)
        year = torch.from_numpy(self.oracle.world.latents.item_year)
        for col, drop in (("dot_no_impossible", e_pool[..., 0] < -1e3),
                          ("dot_year_rule", year[pool.clamp_min(0)] > self._latest_year(rows).unsqueeze(1))):
            keep = valid & ~drop
            out[(col, "value")] = top_rows(model.value(model.task_scores(dot, keep), keep).unsqueeze(-1), pool, k)
        top = torch.topk(model.value(model.task_scores(dot, valid), valid), k, dim=1).indices[:, :100]
        self.impossible_in_top += float((e_pool[..., 0] < -1e3).gather(1, top).float().mean(1).sum())
        return out

    def _latest_year(self, rows: np.ndarray) -> Tensor:
        """int64 [c] the latest release year (index) among each user's seen items (max int: none seen)."""
        seen, year = self.users.seen.take(rows), self.oracle.world.latents.item_year
        return torch.tensor([int(year[seen.values[a:b]].max()) if b > a else np.iinfo(np.int64).max
                             for a, b in zip(seen.offsets[:-1], seen.offsets[1:])])


def _synthetic_config(data_config: Dict[str, Any]) -> SyntheticConfig:
    """The SyntheticConfig a checkpoint's ``data_config`` (``synthetic_dataset`` arguments) built."""
    if data_config.get("_target_") != "silverrec.data.synthetic.synthetic_dataset":
        raise ValueError(f"the headroom needs the synthetic world's latents; the checkpoint was trained on "
                         f"{data_config.get('_target_')!r}")
    overrides = {k: data_config.get(k) for k in ("num_users", "num_items", "interactions_per_user",
                                                 "valid_fraction", "test_fraction") if data_config.get(k) is not None}
    return SyntheticConfig.preset(data_config.get("size", "default"), seed=int(data_config.get("seed", 0)), **overrides)


def _latest(run_dir: str) -> str:
    ckpts = sorted(glob.glob(os.path.join(run_dir, "checkpoints", "step_*.pt")))
    if not ckpts:
        raise FileNotFoundError(f"no checkpoints under {run_dir}/checkpoints")
    return ckpts[-1]


def headroom(ckpt: str, max_users: int = 2000, ks: Tuple[int, ...] = (20, 100, 500)) -> Dict[str, Any]:
    """The two reports (model pool, oracle pool) of a synthetic-world checkpoint."""
    payload = load_checkpoint(ckpt)
    cfg = _synthetic_config(payload["data_config"])
    t0 = time.perf_counter()
    dataset, world = generate_with_world(cfg)
    gen_s = time.perf_counter() - t0
    if dataset.schema.to_dict() != payload["schema"]:
        raise ValueError(f"the regenerated world's schema differs from the one {ckpt!r} was trained on")
    model = load_two_tower(payload)
    oracle = WorldOracle(world, cfg)
    reports = {}
    for name, own in (("model_pool", False), ("oracle_pool", True)):
        ev = HeadroomEvaluator(oracle, own, model, dataset=dataset, split="test", ks=ks, max_users=max_users)
        reports[name] = ev.evaluate(model, local_context())
        reports[name]["impossible_in_dot_top100"] = ev.impossible_in_top / max(ev.users.users.size, 1)
    reports["checkpoint"] = {"path": os.path.abspath(ckpt), "step": int(payload["step"])}
    reports["generation_s"] = round(gen_s, 1)
    return reports


def _rows(reports: Dict[str, Any], ks: List[int]) -> List[List[str]]:
    mp, op = reports["model_pool"], reports["oracle_pool"]
    base = {k: mp[f"value_recall@{k}"]["dot"] for k in ks}
    rows = [["ranking (pool)"] + [f"value_recall@{k}" for k in ks] + [f"vs dot @{k}" for k in ks]]

    def add(label: str, values: Dict[int, float]) -> None:
        rows.append([label] + [f"{values[k]:.4f}" for k in ks] + [f"{100 * (values[k] / base[k] - 1):+.1f}%" for k in ks])

    for col, label in (("dot", "(a) dot (model pool)"), ("overarch", "(b) overarch (model pool)"),
                       ("click_dot", "    click_dot (model pool)"), ("oracle_click", "    oracle click only (model pool)"),
                       ("oracle", "(c) oracle (model pool)"),
                       ("dot_no_impossible", "    dot, impossible items removed (model pool)"),
                       ("dot_year_rule", "    dot, releases after the latest one seen removed")):
        add(label, {k: mp[f"value_recall@{k}"][col] for k in ks})
    add("(d) oracle (oracle pool)", {k: op[f"value_recall@{k}"]["oracle"] for k in ks})
    return rows


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default=None, help="checkpoint (default: the latest in runs/demo)")
    p.add_argument("--max-users", type=int, default=2000, help="test users (the demo's 2000)")
    p.add_argument("--json", default=None, help="also write the two reports here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ckpt = args.ckpt or _latest("runs/demo")
    t0 = time.perf_counter()
    reports = headroom(ckpt, args.max_users)
    mp = reports["model_pool"]
    ks = [int(n.split("@")[1]) for n in mp if n.startswith("value_recall@")]
    print(f"checkpoint {ckpt} (step {reports['checkpoint']['step']}); {mp['num_users']} test users; "
          f"model pool: top-{mp['pool_per_task']} per task merged, {mp['pool_size_mean']:.0f} on average; "
          f"oracle pool: its top-{reports['oracle_pool']['pool_per_task']}")
    print_table(_rows(reports, ks))
    print(f"impossible items (true click logit about -1e4) in the dot Value Model's top-100: "
          f"{100 * mp['impossible_in_dot_top100']:.1f}%")
    print("\nper-task recall@100 over the model pool (oracle: by P(click) * E[label | click])")
    task_rows = [["task", "dot", "overarch", "oracle", "oracle (oracle pool)"]]
    for t, per_k in mp["tasks"].items():
        r = per_k["recall@100"]
        task_rows.append([t, f"{r['dot']:.4f}", f"{r['overarch']:.4f}", f"{r['oracle']:.4f}",
                          f"{reports['oracle_pool']['tasks'][t]['recall@100']['oracle']:.4f}"])
    print_table(task_rows)
    print(f"\n{time.perf_counter() - t0:.0f} s (world generation {reports['generation_s']} s), torch threads "
          f"{torch.get_num_threads()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f, indent=2, sort_keys=True)


if __name__ == "__main__":
    main()
