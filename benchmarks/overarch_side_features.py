"""Do (user history x candidate attribute) side features let a re-scorer beat dot-product retrieval?

The OverArch over ``[u, v, u*v]`` gains nothing on the default world (see
``benchmarks/multitask_headroom.py``: dot 0.5505, OverArch 0.5512, oracle 0.6611 value-weighted
recall@100), although the world has effects an inner product cannot express: per-user category
thresholds, a non-linear novelty / classics preference over the release year, creator loyalty and
a release-after-the-user's-period rule. This script tests whether explicit side features computed
from the user's history item ids (what the serving graph receives) and the candidates' attributes
(the item attribute table it holds) recover part of that headroom.

For every user and every candidate of the :class:`~silverrec.train.multitask_eval.MultiTaskEvaluator`
pool (top-500 per task, merged), with H the user's query history (latest ``history_length`` items):

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
all_mlp                     0.5835  +6.0%    all features, MLP (hidden 32)
only_category               0.5633  +2.3%
only_creator                0.5536  +0.6%
only_year                   0.5689  +3.3%
only_language               0.5525  +0.4%
only_popularity             0.5516  +0.2%
without_category            0.5716  +3.8%
without_creator             0.5832  +5.9%
without_year                0.5675  +3.1%
without_language            0.5794  +5.2%
without_popularity          0.5785  +5.1%
==========================  ======  =======  ===============================================

With ``--hidden 64 --epochs 16 --variants calibrated_dot all_mlp``: all_mlp 0.5946 (+8.0%; @20
+11.8%, @500 +2.6%), calibrated_dot 0.5516 (+0.2%). The year features (the release-after rule and
the novelty / classics preference) and the category features (thresholds) carry the gain; creator
loyalty adds nothing measurable over the rest, language and popularity about 1 point each.
Per-task recall@100 rises too (hidden 64: click 0.525 -> 0.564, like 0.561 -> 0.605, share
0.674 -> 0.725, watch 0.567 -> 0.606).
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
from silverrec.models.two_tower import TwoTower
from silverrec.train.checkpoint import load_checkpoint
from silverrec.train.distributed import local_context
from silverrec.train.multitask_eval import MultiTaskEvaluator, top_rows
from silverrec.train.trainer import load_two_tower

GROUPS: Dict[str, Tuple[str, ...]] = {
    "category": ("cat_share", "cat_unseen"),
    "creator": ("creator_log_count", "creator_seen"),
    "year": ("gap_max", "gap_mean", "after_max", "user_spread"),
    "language": ("lang_share",),
    "popularity": ("log_pop",),
}
FEATURES: Tuple[str, ...] = tuple(f for fs in GROUPS.values() for f in fs)


class SideFeatures:
    """Per (user, candidate) side features from the user's history and the item attributes.

    Args:
        dataset (RecDataset): the data (item category, creator, language, year; training counts).

    Call Args:
        history (JaggedColumn): c rows of history item rows.
        pool (Tensor): int64 [c, M] candidate item rows (-1 padding).

    Returns:
        Tensor: float32 [c, M, F], F = len(FEATURES), in ``FEATURES`` order.
    """

    def __init__(self, dataset: RecDataset) -> None:
        col = lambda name: torch.from_numpy(_single(dataset, name))  # noqa: E731
        self.category, self.creator, self.language, self.year = col("category"), col("creator"), col("language"), col("year")
        counts = np.bincount(dataset.interactions.item[dataset.split.train], minlength=dataset.items.num_rows)
        lp = np.log1p(counts.astype(np.float64))
        self.log_pop = torch.from_numpy(((lp - lp.mean()) / lp.std()).astype(np.float32))

    def __call__(self, history: JaggedColumn, pool: Tensor) -> Tensor:
        c, width = pool.shape
        length = int(history.lengths.max()) if history.num_rows else 0
        h = torch.full((c, max(length, 1)), -1, dtype=torch.int64)
        lens = torch.from_numpy(history.lengths)
        pos = torch.arange(h.shape[1])[None, :] < lens[:, None]
        h[pos] = torch.from_numpy(history.values)
        hv = pos.float()  # [c, L]
        n = lens.clamp_min(1).float()[:, None]  # [c, 1]
        hc, p = h.clamp_min(0), pool.clamp_min(0)

        def count(attr: Tensor) -> Tensor:  # [c, M]: history items sharing the candidate's attribute
            return ((attr[hc][:, None, :] == attr[p][:, :, None]).float() * hv[:, None, :]).sum(-1)

        cat, creator, lang = count(self.category), count(self.creator), count(self.language)
        hy = self.year[hc].float()
        y_max = torch.where(pos, hy, torch.full_like(hy, -1e4)).amax(1, keepdim=True)
        y_max = torch.where(lens[:, None] > 0, y_max, torch.zeros_like(y_max))
        y_mean = (hy * hv).sum(1, keepdim=True) / n
        y = self.year[p].float()
        feats = {
            "cat_share": cat / n, "cat_unseen": (cat == 0).float(),
            "creator_log_count": torch.log1p(creator), "creator_seen": (creator > 0).float(),
            "gap_max": (y - y_max) / 10, "gap_mean": (y - y_mean) / 10, "after_max": (y > y_max).float(),
            "user_spread": ((y_max - y_mean) / 10).expand(c, width),
            "lang_share": lang / n, "log_pop": self.log_pop[p],
        }
        return torch.stack([feats[f] for f in FEATURES], dim=-1)


def _single(dataset: RecDataset, name: str) -> np.ndarray:
    col = dataset.items.columns[name]
    if not np.array_equal(col.lengths, np.ones(dataset.items.num_rows, dtype=np.int64)):
        raise ValueError(f"item feature {name!r} must have one value per item")
    return col.values


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

    def __init__(self, side: SideFeatures, **kwargs: Any) -> None:
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

    def __init__(self, side: SideFeatures, rescorers: Dict[str, Tuple[Rescorer, List[int]]], **kwargs: Any) -> None:
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


def _variants(hidden: int) -> Dict[str, Tuple[List[int], int]]:
    """name -> (feature columns, hidden): calibration only, all groups (linear and MLP), each group
    alone, all but each group."""
    idx = {g: [FEATURES.index(f) for f in fs] for g, fs in GROUPS.items()}
    every = list(range(len(FEATURES)))
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
    side = SideFeatures(ds)
    t1 = time.perf_counter()
    col = _Collector(side, dataset=ds, split="valid", ks=(100,), pool_per_task=500, max_users=train_users, seed=1)
    valid_report = col.evaluate(model, local_context())
    collect_s = time.perf_counter() - t1
    print(f"collected {col.users.users.size} validation users' pools in {collect_s:.0f} s", flush=True)
    t2 = time.perf_counter()
    rescorers, fit_s = {}, {}
    variants = _variants(hidden)
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
            "train_users": int(col.users.users.size), "variants": {n: [FEATURES[c] for c in cols] for n, (_, cols) in rescorers.items()},
            "seconds": {"data": round(gen_s, 1), "collect": round(collect_s, 1), "fit": round(train_s, 1),
                        "fit_each": fit_s, "test": round(time.perf_counter() - t3, 1)}}


def _print_table(rows: List[List[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |")
        if j == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


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
    _print_table(rows)
    print("\nper-task recall@100 (test)")
    cols = [c for c in ("dot", "overarch", "calibrated_dot", "all_linear", "all_mlp") if c in rep["tasks"]["click"]["recall@100"]]
    trows = [["task"] + cols]
    for t, per_k in rep["tasks"].items():
        trows.append([t] + [f"{per_k['recall@100'][c]:.4f}" for c in cols])
    _print_table(trows)
    print(f"\nseconds: {res['seconds']}; total {time.perf_counter() - t0:.0f} s, torch threads {torch.get_num_threads()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, sort_keys=True)


if __name__ == "__main__":
    main()
