"""The OverArch loss modes of TwoTowerTrainTask: serving-like pool negatives and the stop-gradient."""
import ast
import pathlib

import pytest
import torch

import silverrec.models
from silverrec.models.train_task import CandidateSearch, LossConfig, TwoTowerTrainTask
from silverrec.models.two_tower import build_two_tower
from silverrec.train.trainer import ivf_candidate_search
from tests.models.test_two_tower import TASKS, _config, _kjt, _schema

HISTORIES = [[1], [2, 3], [], [4], [6, 0, 8]]
ITEMS = [3, 5, 7, 9, 11]


def _task(**loss):
    torch.manual_seed(0)
    schema = _schema()
    model = build_two_tower(schema, _config())
    task = TwoTowerTrainTask(model, torch.full((20,), -3.0), LossConfig(**loss), search_builder=ivf_candidate_search)
    kjt = _kjt(schema, [0, 1, 2, 0, 1], HISTORIES, ITEMS)
    with torch.no_grad():
        items = model(_kjt(schema, [0] * 20, [[]] * 20, list(range(20))))[1]
    return task, model, kjt, items


def test_pool_negatives_come_from_the_index_top_p_without_the_history():
    task, model, kjt, items = _task(over_arch_negatives="pool", sampled_negatives=6, pool_size=8)
    item_rows, labels = torch.tensor(ITEMS), torch.ones(5, 3)
    with pytest.raises(RuntimeError, match="set_negative_bank"):
        task(kjt, item_rows, labels)
    task.set_negative_bank(items)
    u, _ = model(kjt)
    history = task._history(kjt, 5)
    assert history.tolist() == [[1, -1, -1], [2, 3, -1], [-1, -1, -1], [4, -1, -1], [6, 0, 8]]
    logits, in_pool = task._pool_logits(u, item_rows, history, 5)
    assert logits.shape == (5, 7, 3)
    # the reference pool of each row: the index's ranking of the click head, history removed, first P
    ranked = task.negative_search(u[:, 0].detach(), 20)
    for r in range(5):
        pool = [i for i in ranked[r].tolist() if i >= 0 and i not in HISTORIES[r]][:8]
        assert in_pool[r] == float(ITEMS[r] in pool)
    # every finite negative is a pool item other than the positive: recover them from the logits
    torch.manual_seed(0)
    task.reseed(3)
    logits, _ = task._pool_logits(u, item_rows, history, 5)
    task.reseed(3)
    with torch.no_grad():
        dots = model.task_logits(u, task.negative_bank.unsqueeze(0).expand(5, -1, -1))  # [5, 20, T]
    for r in range(5):
        pool = [i for i in ranked[r].tolist() if i >= 0 and i not in HISTORIES[r]][:8]
        assert float(logits[r, 0, 0]) == pytest.approx(float(dots[r, ITEMS[r], 0]), rel=1e-5)  # column 0: the positive
        for x in logits[r, 1:, 0].tolist():
            if x == float("-inf"):
                continue
            matches = [i for i in range(20) if abs(float(dots[r, i, 0]) - x) < 1e-5]
            assert matches and set(matches) & (set(pool) - {ITEMS[r]})
    loss, parts = task(kjt, item_rows, labels)
    assert set(parts) == {f"{kind}/{t.name}" for kind in ("retrieval", "overarch") for t in TASKS}
    loss.backward()
    assert model.over_arch.scorer.mlp.cross.weight.grad.abs().sum() > 0


def test_the_task_mines_with_the_search_it_is_given():
    """Any SearchBuilder works: here an exact search, whose pool is the exact top P minus the history."""
    built = []

    def exact_builder(bank: torch.Tensor) -> CandidateSearch:
        built.append(bank)
        return lambda queries, k: torch.topk(queries @ bank.T, k, dim=1).indices

    task, model, kjt, items = _task(over_arch_negatives="pool", sampled_negatives=6, pool_size=8)
    task.search_builder = exact_builder
    task.set_negative_bank(items)
    assert len(built) == 1 and torch.equal(built[0], items.float())
    u, _ = model(kjt)
    _, in_pool = task._pool_logits(u, torch.tensor(ITEMS), task._history(kjt, 5), 5)
    ranked = torch.topk(u[:, 0].detach() @ items.T, 20, dim=1).indices
    for r in range(5):
        pool = [i for i in ranked[r].tolist() if i not in HISTORIES[r]][:8]
        assert in_pool[r] == float(ITEMS[r] in pool)


def test_set_negative_bank_without_a_search_builder_is_an_error():
    task, _, _, items = _task(hard_negatives=2)
    task.search_builder = None
    with pytest.raises(RuntimeError, match="search_builder"):
        task.set_negative_bank(items)


def test_models_never_import_the_retrieval_layer():
    """The task gets its candidate search from the trainer; models/ stays below retrieval/."""
    for path in pathlib.Path(silverrec.models.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if "retrieval" in n.split(".")], f"{path} imports {names}"


def test_rows_whose_positive_is_outside_the_pool_do_not_train_the_over_arch():
    task, model, kjt, items = _task(over_arch_negatives="pool", sampled_negatives=4, pool_size=1, over_arch_weight=1.0)
    task.set_negative_bank(items)
    item_rows, labels = torch.tensor(ITEMS), torch.ones(5, 3)
    u, _ = model(kjt)
    _, in_pool = task._pool_logits(u, item_rows, task._history(kjt, 5), 5)
    _, parts = task(kjt, item_rows, labels)
    if not bool(in_pool.any()):  # a pool of 1: usually no positive is in it
        assert all(float(parts[f"overarch/{t.name}"]) == 0.0 for t in TASKS)


def test_over_arch_detach_trains_only_the_over_arch():
    for detach in (False, True):
        task, model, kjt, items = _task(over_arch_detach=detach)
        u, v = model(kjt)
        task._score(u, v.unsqueeze(0).expand(5, -1, -1)).sum().backward()
        assert model.over_arch.scorer.mlp.cross.weight.grad.abs().sum() > 0
        tower_grad = model.user_tower.out.weight.grad
        assert (tower_grad is None or float(tower_grad.abs().sum()) == 0.0) == detach
        scale_grad = model.similarity.log_scale.grad  # the learned temperature: part of the dot logit
        assert (scale_grad is None or float(scale_grad.abs().sum()) == 0.0) == detach
        with torch.no_grad():  # the same logits either way
            torch.testing.assert_close(task._score(u, v.unsqueeze(0).expand(5, -1, -1)),
                                       model.task_logits(u, v.unsqueeze(0).expand(5, -1, -1)))


def test_loss_config_validation():
    with pytest.raises(ValueError, match="over_arch_negatives"):
        LossConfig(over_arch_negatives="hard")
    with pytest.raises(ValueError, match="pool_size"):
        LossConfig(pool_size=0)
    with pytest.raises(ValueError, match="sampled_negatives"):
        LossConfig(over_arch_negatives="pool", sampled_negatives=0)
    assert LossConfig(over_arch_negatives="pool").needs_index and LossConfig(hard_negatives=2).needs_index
    assert not LossConfig().needs_index
