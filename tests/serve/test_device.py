"""The device of an export and of a ``Retriever`` (issue 17, item 3): the plumbing and the errors
are checked on any machine; the serving graph is traced on the ``meta`` device to show it has no
CPU-only constructs; the CUDA runs skip with a reason where there is no GPU."""
import logging
import subprocess
import sys

import pytest
import torch
from torch.export.passes import move_to_device_pass

from silverrec.retrieval.serving_graph import ServingConfig
from silverrec.serve import Retriever, load_artifact
from silverrec.serve.aoti import aoti_usable, vector_isa
from silverrec.serve.artifact import _missing_device
from silverrec.serve.device import resolve_device
from silverrec.serve.http import main as serve_main
from silverrec.train.checkpoint import load_checkpoint
from silverrec.train.export import _tracing_updates, build_serving_graph, example_inputs, export_serving
from silverrec.train.trainer import load_two_tower

CONFIG = ServingConfig(k=20, candidates_per_task=30, num_clusters=12)
NO_CUDA = {"condition": not torch.cuda.is_available(), "reason": "needs a CUDA GPU"}
HAS_CUDA = {"condition": torch.cuda.is_available(), "reason": "this machine has CUDA: the no-CUDA error cannot happen"}


@pytest.fixture(scope="module")
def model(tiny_run):
    return load_two_tower(load_checkpoint(tiny_run["checkpoint"]))


def _args(r, users):
    b = len(users)
    return (r.encoder.users(users), *r.encoder.filters(["", "language:en", "NOT category:music", ""] * (b // 4), b),
            r.encoder.exclude([u["history"][:2] for u in users], b))


def test_resolve_device_names_the_option():
    assert resolve_device("cpu", "device") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"--device='tpu0' is not a device"):
        resolve_device("tpu0", "--device")
    with pytest.raises(ValueError, match=r"device='meta': silverrec serves on one of \('cpu', 'cuda'\)"):
        resolve_device("meta", "device")


@pytest.mark.skipif(**HAS_CUDA)
def test_cuda_without_cuda_is_one_clear_error(model, tiny_dataset, model_path, tmp_path, tiny_run):
    """Each entry point names its option and says to use cpu, before doing any work."""
    with pytest.raises(ValueError, match=r"device='cuda': CUDA is not available on this machine .*use device=cpu"):
        resolve_device("cuda", "device")
    with pytest.raises(ValueError, match=r"device='cuda:1': CUDA is not available"):
        export_serving(model, tiny_dataset, CONFIG, str(tmp_path / "x.pt2"), {}, device="cuda:1")
    assert not (tmp_path / "x.pt2").exists()
    with pytest.raises(ValueError, match=r"device='cuda': CUDA is not available"):
        Retriever(model_path, device="cuda")
    with pytest.raises(SystemExit, match=r"silverrec-serve: --device='cuda': CUDA is not available.*use --device=cpu"):
        serve_main(["--model", model_path, "--device", "cuda"])
    res = subprocess.run([sys.executable, "-m", "silverrec.train.export", f"ckpt_path={tiny_run['checkpoint']}",
                          "device=cuda", f"output={tmp_path / 'y.pt2'}", f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "silverrec-export: device='cuda': CUDA is not available" in res.stderr


def test_explicit_cpu_export_records_its_device_and_serves(model, tiny_dataset, model_path, users, tmp_path):
    """``device="cpu"`` given explicitly: the same graph as the default, recorded in the metadata,
    served by ``Retriever(device="cpu")`` with the default's results."""
    path = str(tmp_path / "cpu.pt2")
    meta = export_serving(model, tiny_dataset, CONFIG, path, {}, device="cpu")
    assert meta["device"] == "cpu" and load_artifact(path)[1]["device"] == "cpu"
    assert load_artifact(model_path)[1]["device"] == "cpu"  # the default
    explicit, default = Retriever(path, device="cpu"), Retriever(model_path)
    assert explicit.device == torch.device("cpu") and explicit.version == default.version
    got, want = explicit.search(*_args(explicit, users[:8])), default.search(*_args(default, users[:8]))
    for g, w in zip(got, want):
        assert g.device.type == "cpu" and torch.equal(g, w)


def test_aoti_library_serves_only_on_its_device_type():
    here = {"isa": vector_isa(), "torch": torch.__version__}
    assert aoti_usable(here) == (True, "")  # libraries from before the device was recorded are CPU ones
    assert aoti_usable({**here, "device": "cpu"}, torch.device("cpu")) == (True, "")
    ok, why = aoti_usable({**here, "device": "cuda", "arch": "sm_90"}, torch.device("cpu"))
    assert not ok and "compiled for cuda, serving on cpu" in why and "device=cpu" in why


def test_a_cuda_export_on_a_machine_without_cuda_is_named():
    meta = '{"device": "cuda"}'
    if torch.cuda.is_available():
        assert _missing_device("x.pt2", meta) is None
    else:
        assert "exported with CUDA tensors (silverrec-export device=cuda)" in _missing_device("x.pt2", meta)
    assert _missing_device("x.pt2", '{"device": "cpu"}') is None and _missing_device("x.pt2", None) is None


def test_serving_graph_traces_on_the_meta_device(model, tiny_dataset):
    """The serving graph and the item tower moved to ``meta`` export with every value on ``meta``:
    nothing in their forwards makes a tensor on a fixed device (a ``torch.arange(n)`` without
    ``device=`` would put a CPU value in the graph or fail to mix with the meta inputs). So the
    same code exports with CUDA tensors (the silverrec ops' fake impls give the shapes)."""
    graph, item_encoder, meta = build_serving_graph(model, tiny_dataset, CONFIG)
    fresh = _tracing_updates(graph, item_encoder, tiny_dataset, meta)
    inputs = tuple(t.to("meta") for t in example_inputs(tiny_dataset, meta, num_users=4, fresh=fresh))
    slots = torch.zeros(3, item_encoder.num_slots, dtype=torch.int64, device="meta")
    with torch.no_grad():
        programs = [torch.export.export(graph.to("meta"), inputs, strict=False),
                    torch.export.export(item_encoder.to("meta"), (slots,), strict=False)]
    for program in programs:
        devices = {(n.name, v.device.type) for n in program.graph.nodes
                   for v in [n.meta.get("val")] if isinstance(v, torch.Tensor)}
        assert devices and {d for _, d in devices} == {"meta"}, sorted(x for x in devices if x[1] != "meta")
    ids, value, scores, num_valid = programs[0].module()(*inputs)
    assert ids.shape == (4, CONFIG.k) and scores.shape[:2] == (4, CONFIG.k) and num_valid.shape == (4,)


def test_a_loaded_export_moves_to_another_device(model_path, users):
    """What ``Retriever(device=...)`` does with an export made on another device: the loaded
    program (silverrec ops, constants and all) moved by ``move_to_device_pass`` runs there; shown
    with ``meta`` where there is no GPU."""
    programs, _ = load_artifact(model_path)
    r = Retriever(model_path)
    inputs = [t.to("meta") for t in (*_args(r, users[:4]), *r.fresh_index)]
    moved = move_to_device_pass(programs["model"], "meta")
    ids, value, scores, num_valid = moved.module()(*inputs)
    assert {t.device.type for t in (ids, value, scores, num_valid)} == {"meta"} and ids.shape == (4, r.k)
    assert {t.device.type for t in moved.state_dict.values()} == {"meta"}


@pytest.mark.skipif(**NO_CUDA)
def test_cuda_export_and_cpu_export_moved_to_cuda_match_cpu(model, tiny_dataset, model_path, users, tmp_path, caplog):
    """On a GPU: an export made with ``device=cuda`` (AOTInductor for the GPU) and the CPU export
    moved to CUDA both give the CPU graph's results; the CPU export's AOTInductor library is
    not used on CUDA, and a log line says so."""
    cpu = Retriever(model_path)
    want = cpu.search(*_args(cpu, users[:8]))
    path = str(tmp_path / "cuda.pt2")
    meta = export_serving(model, tiny_dataset, CONFIG, path, {}, aoti=True, device="cuda")
    assert meta["device"] == "cuda" and meta["aoti"]["device"] == "cuda"
    cpu_aoti = str(tmp_path / "cpu_aoti.pt2")
    export_serving(model, tiny_dataset, CONFIG, cpu_aoti, {}, aoti=True)
    with caplog.at_level(logging.INFO, logger="silverrec.serve.retriever"):
        moved = Retriever(cpu_aoti, device="cuda")
    assert moved.backend == "export" and "compiled for cpu, serving on cuda" in caplog.text
    for r in (Retriever(path, device="cuda"), Retriever(path, device="cuda", backend="export"), moved):
        got = r.search(*_args(r, users[:8]))
        assert torch.equal(got[0], want[0]) and torch.equal(got[3], want[3])
        torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-5)
        r.upsert_items([{"item_id": "new-on-gpu", "attributes": tiny_dataset.item_terms()[2]}])
        assert len(r.query(users[:2], k=3)) == 2
