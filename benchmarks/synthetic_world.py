"""Synthetic world report: sizes and generation time of each preset, and how learnable it is.

For each preset it prints users / items / interactions / split sizes, the generation time
(wall and process CPU seconds, median of ``--repeats`` runs; the CPU time is the steadier number
on a shared machine) and recall@100 on
the test split of three *oracle* rankers that read the world's hidden state:

* ``pop``:  most popular items in train (the baseline a model must beat);
* ``dot``:  the part of the true logit a dot-product two-tower expresses directly
  (``factor_scale * <u, v> + log-popularity + language bonus``);
* ``full``: the true logit (adds category thresholds, the year/user-type term, creator loyalty),
  i.e. the ceiling a re-scorer can approach.

Items the user interacted with in train are excluded, as in the trainer's evaluation.

    python benchmarks/synthetic_world.py                  # tiny, small, default
    python benchmarks/synthetic_world.py --presets small --repeats 3
"""
import argparse
import time
from typing import Callable, List

import numpy as np
import torch

from silverrec.data.dataset import RecDataset
from silverrec.data.synthetic import SyntheticConfig, generate_with_world


def recall_at(ds: RecDataset, scores_of: Callable[[np.ndarray], torch.Tensor], k: int = 100,
              max_users: int = 2000, chunk: int = 256) -> float:
    """recall@k over the test interactions of up to ``max_users`` users (train items excluded)."""
    it, sp = ds.interactions, ds.split
    users = np.unique(it.user[sp.test])[:max_users]
    hits = total = 0
    for a in range(0, users.size, chunk):
        us = users[a:a + chunk]
        s = scores_of(us).clone()
        tr = sp.train[np.isin(it.user[sp.train], us)]
        s[torch.from_numpy(np.searchsorted(us, it.user[tr])), torch.from_numpy(it.item[tr])] = -float("inf")
        top = s.topk(k, dim=1).indices.numpy()
        te = sp.test[np.isin(it.user[sp.test], us)]
        hits += int((top[np.searchsorted(us, it.user[te])] == it.item[te][:, None]).any(1).sum())
        total += te.size
    return hits / max(total, 1)


def main(argv: List[str] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "small", "default"])
    p.add_argument("--repeats", type=int, default=1, help="generation runs per preset (median time)")
    args = p.parse_args(argv)
    print(f"torch threads: {torch.get_num_threads()}")
    header = (f"| preset  | users  | items  | interactions | train / valid / test      | gen. time (s) "
              f"| CPU time (s) | recall@100 pop | dot oracle | full oracle |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name in args.presets:
        cfg = SyntheticConfig.preset(name)
        times, cpu = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            ds, world = generate_with_world(cfg)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        pop = torch.from_numpy(np.bincount(ds.interactions.item[ds.split.train], minlength=cfg.num_items)).float()
        r_pop = recall_at(ds, lambda u: pop.expand(len(u), -1))
        r_dot = recall_at(ds, lambda u: world.latents.logits(u, full=False))
        r_full = recall_at(ds, lambda u: world.latents.logits(u, full=True))
        s = ds.split
        split = f"{s.train.size} / {s.valid.size} / {s.test.size}"
        print(f"| {name:7s} | {cfg.num_users:6d} | {cfg.num_items:6d} | {len(ds.interactions):12d} | {split:25s} "
              f"| {float(np.median(times)):13.2f} | {float(np.median(cpu)):12.2f} | {r_pop:14.3f} | {r_dot:10.3f} | {r_full:11.3f} |")


if __name__ == "__main__":
    main()
