import math
from typing import Dict, List, Set, Tuple

import numpy as np
import pytest
import torch

from silverrec.data.dataset import Interactions, RecDataset, Split
from silverrec.models.two_tower import TwoTower, TwoTowerConfig, build_two_tower
from silverrec.train.ground_truth import exact_topk
from silverrec.train.distributed import local_context
from silverrec.train.evaluator import Evaluator
from silverrec.train.multitask_eval import MultiTaskEvaluator, _heldout_pairs, log_multitask, multitask_table

KS = (5, 20)
POOL = 20
FORMULA = "0.6*like + 0.3*share + 0.1*watch"


def _model(dataset: RecDataset, over_arch: bool = True) -> TwoTower:
    torch.manual_seed(0)
    cfg = TwoTowerConfig(embedding_dim=8, user_layers=[16, 8], item_layers=[16, 8], value_formula=FORMULA,
                         **({} if over_arch else {"over_arch": None}))
    model = build_two_tower(dataset.schema, cfg)
    model.task_rates.copy_(torch.tensor([1.0, 0.4, 0.08, 0.6]))
    if over_arch:  # an untrained OverArch barely moves the logits: make its correction matter
        with torch.no_grad():
            for p in model.over_arch.parameters():
                p.normal_(0.0, 0.7)
    return model


@pytest.fixture(scope="module")
def model(tiny_dataset) -> TwoTower:
    return _model(tiny_dataset)


@pytest.fixture(scope="module")
def report(tiny_dataset, model) -> Dict:
    # 60 users in chunks of 16: the last chunk is partial
    return MultiTaskEvaluator(tiny_dataset, "test", ks=KS, max_users=60, pool_per_task=POOL, chunk=16).evaluate(
        model, local_context()
    )


def _heldout(dataset: RecDataset, split: str, user: int) -> Dict[int, Dict[str, float]]:
    """The user's distinct held-out items with the max label per task, by a plain loop."""
    it = dataset.interactions
    out: Dict[int, Dict[str, float]] = {}
    for i in dataset.split.get(split).tolist():
        if int(it.user[i]) != user:
            continue
        labels = out.setdefault(int(it.item[i]), {})
        for t, col in it.labels.items():
            labels[t] = max(labels.get(t, -math.inf), float(col[i]))
    return out


def _value(labels: Dict[str, float]) -> float:
    return 0.6 * labels["like"] + 0.3 * labels["share"] + 0.1 * labels["watch"]


def test_report_has_exactly_the_documented_keys(report, model):
    assert set(report) == {"tasks", "value_recall@5", "value_recall@20", "num_users", "pool_size_mean",
                           "pool_per_task", "has_over_arch"}
    assert list(report["tasks"]) == model.task_names
    for per_k in report["tasks"].values():
        assert set(per_k) == {"recall@5", "recall@20"}
        for cols in per_k.values():
            assert set(cols) == {"dot", "overarch"}
            assert all(isinstance(x, float) and 0.0 <= x <= 1.0 for x in cols.values())
    for k in KS:
        assert set(report[f"value_recall@{k}"]) == {"dot", "overarch", "click_dot"}
    assert report["num_users"] == 60 and report["pool_per_task"] == POOL and report["has_over_arch"] is True
    # the T lists of P overlap: the merged pool holds between P and T * P items
    assert POOL <= report["pool_size_mean"] <= 4 * POOL
    # recall grows with K
    for per_k in report["tasks"].values():
        assert per_k["recall@5"]["dot"] <= per_k["recall@20"]["dot"]


def test_dot_recall_equals_exact_retrieval_per_task(tiny_dataset, model, report):
    ds = tiny_dataset
    ev = Evaluator(ds, "test", max_users=60)  # the same seed-0 subset of users
    u, v = ev.embed(model.eval(), local_context())
    users = ev.users.users.tolist()
    held = [_heldout(ds, "test", user) for user in users]
    for t, task in enumerate(model.task_names):
        _, rows = exact_topk(u[:, t], v, max(KS), exclude=ev.users.seen)
        for k in KS:
            recalls = []
            for r in range(len(users)):
                relevant = {item for item, labels in held[r].items() if labels[task] >= 0.5}
                if relevant:
                    top = set(rows[r, :k].tolist())
                    recalls.append(len(top & relevant) / len(relevant))
            assert report["tasks"][task][f"recall@{k}"]["dot"] == pytest.approx(sum(recalls) / len(recalls), abs=1e-9)


def _naive_rankings(model: TwoTower, u: List[List[float]], v: List[List[float]], seen: Set[int],
                    uu: torch.Tensor, pool_per_task: int, k: int) -> Dict[str, List[int]]:
    """One user's top-k by value with dot and with OverArch logits, by loops over the pool."""
    n_tasks, n_items = len(u), len(v)
    pool: Set[int] = set()
    for t in range(n_tasks):
        scored = [(sum(a * b for a, b in zip(u[t], v[i])), i) for i in range(n_items) if i not in seen]
        scored.sort(key=lambda x: -x[0])
        pool.update(i for _, i in scored[:pool_per_task])
    cands = sorted(pool)
    scale = float(model.similarity.scale().detach())
    dot = [[scale * sum(a * b for a, b in zip(u[t], v[i])) for t in range(n_tasks)] for i in cands]
    with torch.no_grad():
        correction = model.over_arch(uu, torch.tensor([v[i] for i in cands])[None])[0].tolist()
    over = [[dot[j][t] + correction[j][t] for t in range(n_tasks)] for j in range(len(cands))]
    rates = model.task_rates.tolist()
    names = model.task_names
    out = {}
    for name, logits in (("dot", dot), ("overarch", over)):
        probs = [[0.0] * n_tasks for _ in cands]
        for t in range(n_tasks):
            top = max(row[t] for row in logits)
            exps = [math.exp(row[t] - top) for row in logits]
            for j in range(len(cands)):
                probs[j][t] = rates[t] * exps[j] / sum(exps)
        values = [_value(dict(zip(names, p))) for p in probs]
        order = sorted(range(len(cands)), key=lambda j: -values[j])
        out[name] = [cands[j] for j in order[:k]]
    return out


def test_value_recall_equals_a_naive_per_user_loop(tiny_dataset, model):
    ds = tiny_dataset
    ks, pool = (20, 100), 100  # an untrained model: a larger K so that the recalls are not all 0
    got = MultiTaskEvaluator(ds, "test", ks=ks, max_users=20, pool_per_task=pool, chunk=7).evaluate(model, local_context())
    ev = Evaluator(ds, "test", max_users=20)
    u, v = ev.embed(model.eval(), local_context())
    v_list = v.double().tolist()
    per_user: Dict[Tuple[str, int], List[float]] = {(c, k): [] for c in ("dot", "overarch") for k in ks}
    for r, user in enumerate(ev.users.users.tolist()):
        held = _heldout(ds, "test", user)
        values = {item: max(0.0, _value(labels)) for item, labels in held.items()}
        total = sum(values.values())
        ranked = _naive_rankings(model, u[r].double().tolist(), v_list, set(ev.users.seen.row(r).tolist()),
                                 u[r : r + 1], pool, max(ks))
        for (col, k), acc in per_user.items():
            if total > 0:
                acc.append(sum(values.get(item, 0.0) for item in ranked[col][:k]) / total)
    for (col, k), acc in per_user.items():
        assert got[f"value_recall@{k}"][col] == pytest.approx(sum(acc) / len(acc), abs=1e-6), (col, k)
    # non-trivial numbers, and the OverArch really changes the ranking, so both columns test something
    assert 0.0 < got["value_recall@100"]["dot"] < 1.0
    assert got["value_recall@100"]["dot"] != got["value_recall@100"]["overarch"]


def test_without_over_arch_both_columns_are_the_dot_numbers(tiny_dataset):
    model = _model(tiny_dataset, over_arch=False)
    model.train()
    m = MultiTaskEvaluator(tiny_dataset, "test", ks=KS, max_users=30, pool_per_task=POOL).evaluate(model, local_context())
    assert model.training  # the mode is restored
    assert m["has_over_arch"] is False
    for per_k in m["tasks"].values():
        for cols in per_k.values():
            assert cols["dot"] == cols["overarch"]
    for k in KS:
        assert m[f"value_recall@{k}"]["dot"] == m[f"value_recall@{k}"]["overarch"]
    # click_dot ranks by the click task's dot logit: its value recall is not the Value Model's
    assert m["value_recall@20"]["click_dot"] is not None


class _FakeLogger:
    def __init__(self) -> None:
        self.logged: Dict[str, float] = {}

    def scalars(self, values, step: int, prefix: str = "") -> None:
        self.logged.update({f"{prefix}{k}": v for k, v in values.items()})


def test_log_and_table(report, model):
    logger = _FakeLogger()
    log_multitask(logger, report, step=3, prefix="test/")
    tags = set(logger.logged)
    for task in model.task_names:
        for k in KS:
            assert {f"test/multitask/{task}/recall@{k}/dot", f"test/multitask/{task}/recall@{k}/overarch"} <= tags
    for k in KS:
        for col in ("dot", "overarch", "click_dot"):
            assert logger.logged[f"test/multitask/value_recall@{k}/{col}"] == report[f"value_recall@{k}"][col]
    log_multitask(None, report, step=3, prefix="test/")  # no-op

    rows = multitask_table(report)
    assert rows[0] == ["task", "recall@5 dot", "recall@5 overarch", "recall@20 dot", "recall@20 overarch", "gain@20"]
    assert [r[0] for r in rows[1:]] == model.task_names + ["value (weighted)"]
    assert all(len(r) == len(rows[0]) for r in rows)
    v = report["value_recall@20"]
    assert rows[-1][-1] == f"{100 * (v['overarch'] / v['dot'] - 1):+.1f}%"


def test_clear_errors(tiny_dataset):
    ds = tiny_dataset
    with pytest.raises(ValueError, match="exceeds the per-task pool size"):
        MultiTaskEvaluator(ds, "test", ks=(5, 50), pool_per_task=20)
    with pytest.raises(ValueError, match="valid' or 'test"):
        MultiTaskEvaluator(ds, "train")
    empty = RecDataset(ds.schema, ds.users, ds.items, ds.interactions,
                       Split(ds.split.train, np.zeros(0, dtype=np.int64), ds.split.test))
    with pytest.raises(ValueError, match="'valid' split is empty"):
        MultiTaskEvaluator(empty, "valid")
    with pytest.raises(TypeError, match="TwoTower"):
        MultiTaskEvaluator(ds, "test", ks=KS, max_users=5).evaluate(torch.nn.Linear(2, 2), local_context())


def test_an_item_held_out_twice_keeps_its_max_label_per_task(tiny_dataset):
    ds = tiny_dataset
    it = ds.interactions
    i = int(ds.split.test[0])
    labels = {t: col.copy() for t, col in it.labels.items()}
    # the repeat: like flipped up, watch down; the pair must keep like = 1 and the first watch
    extra = {t: np.float32(col[i]) for t, col in labels.items()}
    extra["like"], extra["watch"] = np.float32(1.0), np.float32(0.0)
    dup = Interactions(np.r_[it.user, it.user[i]], np.r_[it.item, it.item[i]], np.r_[it.timestamp, it.timestamp[i] + 1],
                       {t: np.r_[col, extra[t]] for t, col in labels.items()})
    ds2 = RecDataset(ds.schema, ds.users, ds.items, dup, Split(ds.split.train, ds.split.valid, np.r_[ds.split.test, len(it)]))
    users = np.array([it.user[i]])
    keys, got = _heldout_pairs(ds2, "test", users)
    row = int(np.flatnonzero(keys == it.item[i])[0])  # user position 0: key == item
    assert keys.size == np.unique(keys).size == _heldout_pairs(ds, "test", users)[0].size
    assert got["like"][row] == 1.0 and got["watch"][row] == it.labels["watch"][i]
