"""Do (user history x candidate attribute) side features let a re-scorer beat dot-product retrieval?

The OverArch over ``[u, v, u*v]`` gains nothing on the default world (see
``benchmarks/multitask_headroom.py``: dot 0.5505, OverArch 0.5512, oracle 0.6611 value-weighted
recall@100), although the world has effects an inner product cannot express: per-user category
thresholds, a non-linear novelty / classics preference over the release year, creator loyalty and
a release-after-the-user's-period rule. This script tests whether explicit side features computed
from the user's history item ids (what the serving graph receives) and the candidates' attributes
(the item attribute table it holds) recover part of that headroom.

For every user and every candidate of the :class:`~silverrec.train.multitask_eval.MultiTaskEvaluator`
pool (top-500 per task, merged), with H the user's query history (latest ``history_length`` items),
the features of :class:`silverrec.models.side_features.SideFeatures` (the module the OverArch's
``side_features`` option uses in training, evaluation and serving):

============  ==============================================================================
group         features of (user, candidate i)
============  ==============================================================================
category      share of H in category(i); [no item of H in category(i)]
creator       log(1 + #items of H by creator(i)); [creator(i) in H]
year          (year(i) - max year(H)) / 10; (year(i) - mean year(H)) / 10;
              [year(i) > max year(H)]; (max - mean year(H)) / 10 (a per-user hint of the type)
language      share of H in language(i)
popularity    log(1 + training interactions of i), standardised
============  ==============================================================================

A re-scorer maps ``[dot logits (T), features (F)]`` to T corrected task logits,
``logit_t = a_t * dot_t + b_t + f(x)_t`` with ``f`` linear (``linear``) or a one-hidden-layer MLP
(``mlp``), then the model's own ``task_scores`` and Value Model rank the pool, so the re-scorer is
an OverArch with extra inputs. It is trained with the listwise loss that matches the
normalisation of ``task_scores``: per task t, the softmax cross-entropy over the user's pool of the
held-out items weighted by their label t. Training data: the *validation* split (users'
histories: their training items; targets: their validation items, in the pool built from those
histories); nothing of the test split is used. Evaluation: the test split's 2000 users, the same
pool and metric as ``make demo``'s "multitask" report (columns added through
:meth:`MultiTaskEvaluator.rankings`).

    .venv/bin/python benchmarks/overarch_side_features.py                        # runs/demo's latest checkpoint
    .venv/bin/python benchmarks/overarch_side_features.py --cache-dir /tmp/srcache --json out.json

Result on the demo checkpoint (``runs/demo``, step 2000; 2000 test users, pool 743 on average;
re-scorers trained on 6000 users' validation items, 8 epochs, MLP hidden 32; 1 thread, 6 minutes
on a shared 2-core machine), value-weighted recall@100 and its change vs dot:

==========================  ======  =======  ===============================================
ranking                     @100    vs dot   what it re-scores with
==========================  ======  =======  ===============================================
dot                         0.5505  +0.0%    the towers' dot logits (the demo's "dot")
overarch                    0.5512  +0.1%    the trained OverArch over [u, v, u*v]
calibrated_dot              0.5522  +0.3%    a_t dot_t + b_t only (no side feature)
all_linear                  0.5651  +2.6%    all features, linear
all_mlp                     0.5840  +6.1%    all features, MLP (hidden 32)
only_category               0.5633  +2.3%    dot + the category group alone (MLP)
only_creator                0.5536  +0.6%
only_year                   0.5691  +3.4%
only_language               0.5525  +0.4%
only_popularity             0.5516  +0.2%
without_category            0.5725  +4.0%    every group but category (MLP)
without_creator             0.5843  +6.1%
without_year                0.5675  +3.1%
without_language            0.5796  +5.3%
without_popularity          0.5782  +5.0%
==========================  ======  =======  ===============================================

With ``--hidden 64 --epochs 16 --variants calibrated_dot all_mlp``: all_mlp 0.5945 (+8.0%; @20
+12.5%, @500 +2.6%), calibrated_dot 0.5516 (+0.2%). The year features (the release-after rule and
the novelty / classics preference) and the category features (thresholds) carry the gain; creator
loyalty adds nothing measurable over the rest, language and popularity about 1 point each.
Per-task recall@100 rises too (hidden 64: click 0.525 -> 0.564, like 0.561 -> 0.605, share
0.674 -> 0.726, watch 0.567 -> 0.606). The OverArch trained with these features
(``model.over_arch.side_features``, on in ``make demo``) gains +8.2% and +10.3% in two training
runs (README).
"""
import argparse
import glob
import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from silverrec.data.dataset import JaggedColumn, RecDataset
from silverrec.data.synthetic import synthetic_dataset
from silverrec.models.side_features import COLUMNS, SideFeatures, side_feature_specs
from silverrec.models.two_tower import TwoTower
from silverrec.train.checkpoint import load_checkpoint
from silverrec.train.distributed import local_context
from silverrec.train.multitask_eval import MultiTaskEvaluator, padded_rows, top_rows
from silverrec.train.trainer import load_two_tower

from markdown_table import print_table  # a module beside this script (the script's folder is sys.path[0])

# the groups are the data's item attributes and popularity, as the OverArch's side_features=[all]
# (silverrec/models/side_features.py), whose module computes the features here exactly as the
# trained model, the evaluation and the serving graph do


class PoolSideFeatures:
    """:class:`~silverrec.models.side_features.SideFeatures` (every group) over a data set's items,
    for jagged histories and candidate pools.

    Args:
        dataset (RecDataset): the data (item category, creator, language, year; training counts).

    Call Args:
        history (JaggedColumn): c rows of history item rows.
        pool (Tensor): int64 [c, M] candidate item rows (-1 padding).

    Returns:
        Tensor: float32 [c, M, F] in ``features`` order.

    Attributes:
        features (List[str]): ``<attribute>/<column>`` names of the F columns.
        groups (Dict[str, List[int]]): each attribute's columns.
    """

    def __init__(self, dataset: RecDataset) -> None:
        specs = side_feature_specs(dataset.schema, ["all"])
        self.module = SideFeatures(specs, dataset.items.num_rows)
        counts = np.bincount(dataset.interactions.item[dataset.split.train], minlength=dataset.items.num_rows)
        self.module.set_items_from(dataset.schema, dataset.items.columns, counts)
        self.features: List[str] = [f"{s.name}/{c}" for s in specs for c in COLUMNS[s.kind]]
        self.groups: Dict[str, List[int]] = {s.name: [i for i, f in enumerate(self.features) if f.startswith(s.name + "/")]
                                             for s in specs}

    @torch.no_grad()
    def __call__(self, history: JaggedColumn, pool: Tensor) -> Tensor:
        return self.module(padded_rows(history), pool)


class Rescorer(nn.Module):
    """``logit_t = a_t dot_t + b_t + f([dot, x])_t``; ``f`` linear or an MLP (``hidden`` > 0).

    Args:
        num_tasks (int): T. num_features (int): F (the columns of ``x`` it uses). hidden (int): 0 = linear.
    """

    def __init__(self, num_tasks: int, num_features: int, hidden: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.ones(num_tasks))
        self.b = nn.Parameter(torch.zeros(num_tasks))
        d_in = num_tasks + num_features
        self.f = (nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, num_tasks)) if hidden
                  else nn.Linear(d_in, num_tasks))
        with torch.no_grad():
            self.f[-1].weight.mul_(0.1) if hidden else self.f.weight.zero_()

    def forward(self, dot: Tensor, x: Tensor) -> Tensor:
        return self.a * dot + self.b + self.f(torch.cat([dot / 10, x], dim=-1))


class _Collector(MultiTaskEvaluator):
    """Keeps the pool's dot logits, side features, held-out labels [c, M, T] and valid masks."""

    def __init__(self, side: PoolSideFeatures, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.side, self.parts = side, []

    def rankings(self, model, rows, u, v, pool, valid, k):
        out = super().rankings(model, rows, u, v, pool, valid, k)
        dot = model.task_logits(u, v[pool.clamp_min(0)], over_arch=False)
        x = self.side(self.users.history.take(rows), pool)
        n = v.shape[0]
        keys, labels = torch.from_numpy(self._held_keys), torch.from_numpy(
            np.stack([self._held_labels[t] for t in model.task_names], axis=1))
        key = torch.from_numpy(rows)[:, None] * n + pool
        at = torch.searchsorted(keys, key).clamp_max(keys.numel() - 1)
        hit = valid & (keys[at] == key) & (pool >= 0)
        y = labels[at] * hit.unsqueeze(-1)  # [c, M, T]
        self.parts.append((dot.half(), x.half(), y.half(), valid))
        return out


class _Scorer(MultiTaskEvaluator):
    """Adds one value ranking (and per-task rankings) per trained re-scorer."""

    def __init__(self, side: PoolSideFeatures, rescorers: Dict[str, Tuple[Rescorer, List[int]]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.side, self.rescorers = side, rescorers

    def rankings(self, model, rows, u, v, pool, valid, k):
        out = super().rankings(model, rows, u, v, pool, valid, k)
        dot = model.task_logits(u, v[pool.clamp_min(0)], over_arch=False)
        x = self.side(self.users.history.take(rows), pool)
        for name, (r, cols) in self.rescorers.items():
            lg = r(dot, x[..., cols])
            out[(name, "task")] = top_rows(lg.masked_fill(~valid.unsqueeze(-1), float("-inf")), pool, k)
            out[(name, "value")] = top_rows(model.value(model.task_scores(lg, valid), valid).unsqueeze(-1), pool, k)
        return out


def fit(parts: Sequence[Tuple[Tensor, ...]], cols: List[int], hidden: int, epochs: int, seed: int = 0) -> Rescorer:
    """Trains a :class:`Rescorer` on collected chunks with the per-task listwise loss (mean over
    (user, task) pairs with a positive label of the label-weighted softmax cross-entropy)."""
    torch.manual_seed(seed)
    t = parts[0][0].shape[-1]
    r = Rescorer(t, len(cols), hidden)
    opt = torch.optim.Adam(r.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for i in rng.permutation(len(parts)):
            dot, x, y, valid = parts[i]
            dot, x, y = dot.float(), x[..., cols].float(), y.float()
            lg = r(dot, x).masked_fill(~valid.unsqueeze(-1), float("-inf"))
            logp = torch.log_softmax(lg, dim=1).masked_fill(~valid.unsqueeze(-1), 0.0)  # [c, M, T]
            w = y.sum(1)  # [c, T]
            loss = -((y * logp).sum(1) / w.clamp_min(1e-6))[w > 0].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return r.eval()


def _latest(run_dir: str) -> str:
    ckpts = sorted(glob.glob(os.path.join(run_dir, "checkpoints", "step_*.pt")))
    if not ckpts:
        raise FileNotFoundError(f"no checkpoints under {run_dir}/checkpoints")
    return ckpts[-1]


def _variants(hidden: int, groups: Dict[str, List[int]]) -> Dict[str, Tuple[List[int], int]]:
    """name -> (feature columns, hidden): calibration only, all groups (linear and MLP), each group
    alone, all but each group."""
    idx = groups
    every = sorted(c for cols in groups.values() for c in cols)
    out = {"calibrated_dot": ([], 0), "all_linear": (every, 0), "all_mlp": (every, hidden)}
    for g, cols in idx.items():
        out[f"only_{g}"] = (cols, hidden)
    for g in idx:
        out[f"without_{g}"] = ([c for c in every if c not in idx[g]], hidden)
    return out


def run(ckpt: str, train_users: int, test_users: int, hidden: int, epochs: int, cache_dir: Optional[str],
        only: Optional[List[str]] = None) -> Dict[str, Any]:
    payload = load_checkpoint(ckpt)
    dc = payload["data_config"]
    if dc.get("_target_") != "silverrec.data.synthetic.synthetic_dataset":
        raise ValueError(f"this benchmark reads the default synthetic world; {ckpt!r} was trained on {dc.get('_target_')!r}")
    kwargs = {k: v for k, v in dc.items() if k not in ("_target_", "cache_dir", "progress")}
    t0 = time.perf_counter()
    ds = synthetic_dataset(**kwargs, cache_dir=cache_dir)
    gen_s = time.perf_counter() - t0
    if ds.schema.to_dict() != payload["schema"]:
        raise ValueError(f"the regenerated data's schema differs from the one {ckpt!r} was trained on")
    model: TwoTower = load_two_tower(payload)
    side = PoolSideFeatures(ds)
    t1 = time.perf_counter()
    col = _Collector(side, dataset=ds, split="valid", ks=(100,), pool_per_task=500, max_users=train_users, seed=1)
    valid_report = col.evaluate(model, local_context())
    collect_s = time.perf_counter() - t1
    print(f"collected {col.users.users.size} validation users' pools in {collect_s:.0f} s", flush=True)
    t2 = time.perf_counter()
    rescorers, fit_s = {}, {}
    variants = _variants(hidden, side.groups)
    unknown = sorted(set(only or []) - set(variants))
    if unknown:
        raise ValueError(f"--variants: unknown {unknown}; choose from {sorted(variants)}")
    for name, (cols, h) in variants.items():
        if only and name not in only:
            continue
        ts = time.perf_counter()
        rescorers[name] = (fit(col.parts, cols, h, epochs), cols)
        fit_s[name] = round(time.perf_counter() - ts, 1)
        print(f"fitted {name} in {fit_s[name]} s", flush=True)
    train_s = time.perf_counter() - t2
    t3 = time.perf_counter()
    ev = _Scorer(side, rescorers, dataset=ds, split="test", ks=(20, 100, 500), max_users=test_users)
    report = ev.evaluate(model, local_context())
    return {"test": report, "valid_dot_value_recall@100": valid_report["value_recall@100"]["dot"],
            "checkpoint": {"path": os.path.abspath(ckpt), "step": int(payload["step"])},
            "train_users": int(col.users.users.size), "variants": {n: [side.features[c] for c in cols] for n, (_, cols) in rescorers.items()},
            "seconds": {"data": round(gen_s, 1), "collect": round(collect_s, 1), "fit": round(train_s, 1),
                        "fit_each": fit_s, "test": round(time.perf_counter() - t3, 1)}}


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default=None, help="checkpoint (default: the latest in runs/demo)")
    p.add_argument("--train-users", type=int, default=6000, help="validation-split users the re-scorers train on")
    p.add_argument("--test-users", type=int, default=2000, help="test users (the demo's 2000)")
    p.add_argument("--hidden", type=int, default=32, help="hidden width of the MLP re-scorers")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--variants", nargs="*", default=None, help="fit only these re-scorers (default: all)")
    p.add_argument("--cache-dir", default=None, help="cache the generated world here (.npz)")
    p.add_argument("--json", default=None, help="also write the report here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ckpt = args.ckpt or _latest("runs/demo")
    t0 = time.perf_counter()
    res = run(ckpt, args.train_users, args.test_users, args.hidden, args.epochs, args.cache_dir, args.variants)
    rep = res["test"]
    ks = [int(n.split("@")[1]) for n in rep if n.startswith("value_recall@")]
    print(f"checkpoint {ckpt} (step {res['checkpoint']['step']}); re-scorers trained on {res['train_users']} users' "
          f"validation items; test: {rep['num_users']} users, pool {rep['pool_size_mean']:.0f} on average")
    base = {k: rep[f"value_recall@{k}"]["dot"] for k in ks}
    rows = [["ranking (test, same pool)"] + [f"value_recall@{k}" for k in ks] + [f"vs dot @{k}" for k in ks]]
    for c in rep[f"value_recall@{ks[0]}"]:
        vals = {k: rep[f"value_recall@{k}"][c] for k in ks}
        rows.append([c] + [f"{vals[k]:.4f}" for k in ks] + [f"{100 * (vals[k] / base[k] - 1):+.1f}%" for k in ks])
    print_table(rows)
    print("\nper-task recall@100 (test)")
    cols = [c for c in ("dot", "overarch", "calibrated_dot", "all_linear", "all_mlp") if c in rep["tasks"]["click"]["recall@100"]]
    trows = [["task"] + cols]
    for t, per_k in rep["tasks"].items():
        trows.append([t] + [f"{per_k['recall@100'][c]:.4f}" for c in cols])
    print_table(trows)
    print(f"\nseconds: {res['seconds']}; total {time.perf_counter() - t0:.0f} s, torch threads {torch.get_num_threads()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, sort_keys=True)


if __name__ == "__main__":
    main()
