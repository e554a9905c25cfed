"""No host syncs on the CUDA path (issue 17, item 4), checked without a GPU.

Each path runs on ``meta`` tensors under :mod:`tests.host_sync`'s recorder, which fails at the
first ``.item()`` / ``int()`` / ``float()`` / ``bool()`` / ``.tolist()``, ``nonzero`` (or another
op with a data-dependent size), ``.cpu()`` / ``.numpy()`` or device-to-CPU copy, naming the line.
``torch.ops.silverrec`` calls run their CUDA launchers (the Triton kernels swapped for no-ops), so
the launchers' own torch code is what is checked. The first tests show the recorder does fail.

Paths: ``ivf_search``'s CUDA launcher (packed, bool and bitmap masks; the capped-list fallback;
grouped ``[B, T, D]`` queries; both scan kernels), ``IVFInt8Index.forward``, the whole serving
forward (``RetrievalGraph``) and one training step of the two-tower train task.
"""
from typing import Callable

import pytest
import torch

import silverrec  # noqa: F401  (registers the ops)
from tests.host_sync import HostSync, no_host_sync

pytest.importorskip("triton", reason="the CUDA launchers import triton")

from silverrec.ops.triton.ivf_int8_topk import ivf_int8_topk_cuda  # noqa: E402
from silverrec.ops.triton.ivf_search import ivf_search_cuda  # noqa: E402
from tests.ops.test_ivf_int8_topk import random_case as scan_case  # noqa: E402
from tests.ops.test_ivf_search import id_order, random_case  # noqa: E402


@pytest.mark.parametrize("name, sync", [
    ("item", lambda x: x.sum().item()), ("int", lambda x: int(x.max())), ("float", lambda x: float(x.sum())),
    ("bool", lambda x: bool((x > 0).any())), ("if", lambda x: 1 if (x > 0).all() else 0),
    ("nonzero", lambda x: x.nonzero()), ("torch.nonzero", lambda x: torch.nonzero(x)),
    ("masked_select", lambda x: x[x > 0]), ("unique", lambda x: torch.unique(x)),
    ("cpu", lambda x: x.cpu()), ("to cpu", lambda x: x.to("cpu")), ("tolist", lambda x: x.tolist()),
    ("numpy", lambda x: x.numpy()), ("repeat_interleave", lambda x: torch.repeat_interleave(x.long())),
])
def test_the_recorder_catches_every_kind_of_sync(name: str, sync: Callable) -> None:
    with pytest.raises(HostSync, match="host sync"):
        no_host_sync(sync, torch.ones(3))


def test_the_recorder_catches_a_sync_inside_a_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync put back into the CUDA launcher's code path (the old capped-list fallback) is found."""
    from silverrec.ops.reference import ivf as R

    real = R.ivf_search_in_steps

    def with_old_fallback(steps, queries, *rest):
        out = real(steps, queries, *rest)
        (queries.sum(1) < 0).nonzero()  # what `(valid < k).nonzero()` did
        return out
    monkeypatch.setattr("silverrec.ops.triton.ivf_search.ivf_search_in_steps", with_old_fallback)
    case = random_case(0, B=2, N=50, D=8, C=4, k=5, extra_k0=0, n_probe=1, min_rows=0, max_probe=2,
                       density=None, integer=False)
    with pytest.raises(HostSync, match=r"nonzero .* at tests/test_no_host_sync.py"):
        no_host_sync(ivf_search_cuda, *case)


@pytest.mark.parametrize("B", [1, 5, 40])
@pytest.mark.parametrize("density, layout", [(None, None), (0.3, None), (0.3, "bool"), (0.3, "bitmap")])
def test_ivf_search_cuda_launcher(B: int, density, layout) -> None:
    """The whole CUDA search (quantize, probe counts, both scans, the capped-list fallback,
    re-score, result rows), unfiltered and with packed / bool / bitmap masks, at batch 1 (the
    per-query scan) and above (the grouped tl.dot scan)."""
    case = random_case(B, B=B, N=400, D=16, C=40, k=30, extra_k0=10, n_probe=2, min_rows=50, max_probe=4,
                       density=density, integer=False)
    if layout is not None:
        case = id_order(case, layout)[0]
    (scores, ids, rows), ops = no_host_sync(ivf_search_cuda, *case)
    assert scores.shape == ids.shape == rows.shape == (B, 30) and scores.device.type == "meta"
    assert "aten::topk" in ops or B == 1  # the grouped scan's merge ran


@pytest.mark.parametrize("kernel", ["per_query", "grouped"])
def test_both_scans(kernel: str) -> None:
    case = scan_case(0, B=6, N=300, D=24, C=7, P=3, k=20, density=0.5, code_range=127, with_mask=True)
    (s, r, n), _ = no_host_sync(lambda *a: ivf_int8_topk_cuda(*a, kernel=kernel), *case)
    assert s.shape == r.shape == (6, 20) and n.shape == (6,)


def test_task_queries_sharing_a_mask_row() -> None:
    """``[B, T, D]`` queries (the serving graph's task heads) with one mask row per user."""
    case = list(random_case(2, B=6, N=300, D=16, C=12, k=10, extra_k0=5, n_probe=2, min_rows=40, max_probe=3,
                            density=0.2, integer=False))
    case[0], case[1], case[7] = case[0].reshape(3, 2, 16), case[1].reshape(3, 2, 12), case[7][:3]
    (scores, _, _), _ = no_host_sync(ivf_search_cuda, *case)
    assert scores.shape == (3, 2, 10)


def test_ivf_index_forward() -> None:
    """The index layer's forward (what the serving graph calls) through the registered op."""
    from silverrec.retrieval.ivf_index import IVFInt8Index

    index = IVFInt8Index.build(torch.randn(500, 16, generator=torch.Generator().manual_seed(0)), num_clusters=20)
    state = {k: v for k, v in index.named_buffers()}
    mask = torch.zeros(4, (500 + 63) // 64, dtype=torch.int64)

    def forward(state, q, mask):
        return torch.func.functional_call(index, state, (q, mask, 10, 3))
    (scores, ids, rows), ops = no_host_sync(forward, state, torch.randn(4, 16), mask)
    assert scores.shape == (4, 10) and "silverrec::ivf_search" in ops


def test_serving_forward(tiny_run, tiny_dataset) -> None:
    """The whole serving graph (filters, exclusions, fresh items, ANN, OverArch, value model):
    every stage's ops, and each silverrec op's CUDA launcher, without a host sync."""
    from silverrec.retrieval.serving_graph import ServingConfig
    from silverrec.train.checkpoint import load_checkpoint
    from silverrec.train.export import _tracing_updates, build_serving_graph, example_inputs
    from silverrec.train.trainer import load_two_tower

    model = load_two_tower(load_checkpoint(tiny_run["checkpoint"]))
    graph, item_encoder, meta = build_serving_graph(model, tiny_dataset, ServingConfig(k=20, candidates_per_task=30,
                                                                                         num_clusters=12))
    fresh = _tracing_updates(graph, item_encoder, tiny_dataset, meta)
    inputs = example_inputs(tiny_dataset, meta, num_users=4, fresh=fresh)
    state = {k: v.detach() for k, v in graph.named_parameters()}
    state.update(graph.named_buffers())

    def forward(state, *inputs):
        return torch.func.functional_call(graph, state, inputs)
    with torch.no_grad():
        (ids, value, task_scores, num_valid), ops = no_host_sync(forward, state, *inputs)
    assert ids.shape == (4, 20) and ids.device.type == "meta"
    silverrec_ops = {o for o in ops if o.startswith("silverrec::")}
    assert {"silverrec::bloom_search", "silverrec::exact_filter"} <= silverrec_ops, silverrec_ops
    assert silverrec_ops & {"silverrec::ivf_search", "silverrec::ivf_search_bloom"}, silverrec_ops


def test_ivf_index_search_on_the_device() -> None:
    """``IVFInt8Index.search`` off the CPU: sync-free with ``check=False``; with the default
    check, its one device read (the NaN/inf check) is found by the recorder."""
    from silverrec.retrieval.ivf_index import IVFInt8Index

    index = IVFInt8Index.build(torch.randn(500, 16, generator=torch.Generator().manual_seed(0)), num_clusters=20)
    state = {k: v for k, v in index.named_buffers()}

    def search(state, q, check):
        for name, t in state.items():
            setattr(index, name, t)
        try:
            return index.search(q, 10, n_probe=3, mask=torch.ones(4, 500, dtype=torch.bool, device=q.device),
                                check=check)
        finally:
            for name, t in saved.items():
                setattr(index, name, t)
    saved = dict(state)
    result, _ = no_host_sync(search, state, torch.randn(4, 16), False)
    assert result.ids.shape == (4, 10) and result.ids.device.type == "meta"
    with pytest.raises(HostSync, match=r"__bool__.*in search"):
        no_host_sync(search, state, torch.randn(4, 16), True)


def _train_task(dataset, history_width, **loss):
    """A two-tower train task over ``dataset`` whose candidate search runs on ``meta`` (built on
    the CPU from stand-in embeddings, then moved: building is per refresh, not per step)."""
    from silverrec.data.batching import TrainBatches
    from silverrec.models.train_task import LossConfig, TwoTowerTrainTask
    from silverrec.models.two_tower import TwoTowerConfig, build_two_tower
    from silverrec.retrieval.ivf_index import IVFInt8Index

    def builder(bank):
        index = IVFInt8Index.build(torch.randn(bank.shape, generator=torch.Generator().manual_seed(0)),
                                   num_clusters=8).to("meta")
        return lambda q, k: index.search(q, k, check=False).ids
    torch.manual_seed(0)
    tt = build_two_tower(dataset.schema, TwoTowerConfig())
    task = TwoTowerTrainTask(tt, torch.full((dataset.items.num_rows,), -3.0), LossConfig(**loss),
                             search_builder=builder, history_width=history_width)
    batch = next(iter(TrainBatches(dataset, 32, seed=0).epoch(0)))
    with torch.no_grad():
        item_dim = tt(batch.features)[1].shape[1]
    task.set_negative_bank(torch.randn(dataset.items.num_rows, item_dim))
    labels = torch.stack([batch.labels[t] for t in dataset.schema.task_names], dim=1)
    return task, (batch.features, batch.item_rows, labels)


def _train_step(task):
    from silverrec.train.loss_watch import LossWatch

    def step(state, features, item_rows, labels):
        for t in state.values():
            if t.is_floating_point():
                t.requires_grad_(True)
        task.reseed(7)
        loss, _ = torch.func.functional_call(task, state, (features, item_rows, labels))
        loss.backward()
        LossWatch().update(loss, step=3)  # the trainer's per-step bookkeeping
        return loss
    state = {k: v.detach() for k, v in task.named_parameters()}
    state.update(task.named_buffers())
    return step, state


@pytest.mark.parametrize("loss", [dict(over_arch_negatives="pool", sampled_negatives=4, pool_size=20),
                                  dict(hard_negatives=3, sampled_negatives=4)])
def test_training_step(tiny_dataset, loss) -> None:
    """Forward and backward of the train task (towers, OverArch, negatives mined from the index
    by the candidate search, pool draws) and the loss bookkeeping: no host sync per step."""
    task, batch = _train_task(tiny_dataset, tiny_dataset.schema.history_length, **loss)
    assert task.two_tower.over_arch is not None
    step, state = _train_step(task)
    out, ops = no_host_sync(step, state, *batch)
    assert out.device.type == "meta" and "silverrec::ivf_search" in ops  # the negatives' search ran


def test_training_step_reading_the_history_length_syncs(tiny_dataset) -> None:
    """Without ``history_width`` the history matrix is as wide as the batch's longest history,
    read on the host: the recorder finds it (the trainer always passes the schema's length)."""
    task, batch = _train_task(tiny_dataset, None, over_arch_negatives="pool", sampled_negatives=4, pool_size=20)
    step, state = _train_step(task)
    with pytest.raises(HostSync, match=r"models/train_task.py:\d+ in _history"):
        no_host_sync(step, state, *batch)


def test_loss_watch_raises_at_the_next_check_naming_the_step() -> None:
    from silverrec.train.loss_watch import LossWatch

    watch = LossWatch()
    for step, value in enumerate([0.5, 0.4, float("inf"), float("nan"), 0.3], start=1):
        watch.update(torch.tensor(value), step)
    with pytest.raises(FloatingPointError, match=r"training loss became inf at step 3"):
        watch.check()
    fine = LossWatch()
    fine.update(torch.tensor(0.1), 1)
    fine.check()


def test_ivf_search_bloom_cuda_launcher() -> None:
    """The Bloom-filtered search's CUDA launcher (plans over all rows, deny words, exclusions, then
    ivf_search's kernels), flat and [B, T, D] queries."""
    from silverrec.ops.triton.ivf_search_bloom import ivf_search_bloom_cuda
    from tests.ops.test_ivf_search_bloom import bloom_case

    for B, T in ((1, 0), (6, 0), (4, 2)):
        case = bloom_case(B, B, 300, 8, 10, 2, 40, 4, T=T)
        (scores, ids, rows), ops = no_host_sync(ivf_search_bloom_cuda, *case)
        assert scores.shape == ((B, T, 10) if T else (B, 10))
        assert "silverrec::bloom_search" not in ops  # the launcher's kernels, not the op's fallback
