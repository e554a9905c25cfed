"""``make gpu-check``: everything the GPU claims rest on, in one command, on a machine with one CUDA GPU.

    make gpu-check                                   # venv with fbgemm-gpu==1.8.0, then this script
    .venv/bin/python benchmarks/gpu_check.py         # the same, in an existing venv
    .venv/bin/python benchmarks/gpu_check.py --dry-run   # every step on the CPU, tiny sizes (no GPU needed)

Steps (about 8 minutes on one GPU; each step's budget is in ``STEPS``):

1. **ops**: every op of ``torch.ops.silverrec`` on CUDA tensors (the registered Triton kernels)
   against its plain-torch reference on random cases (the test suite's generators), exact
   equality (scores bit for bit, ids and rows exactly); ``ivf_int8_topk`` with both scans (per
   query and grouped ``tl.dot``) forced and chosen, and both timed at batch 1 / 16 / 256.
2. **ann**: ``benchmarks/ann.py --device cuda`` (200k clustered items, no filter and a 10%
   filter, batch 1 / 16 / 256) against FAISS on the GPU when ``faiss`` has a GPU build, else
   FAISS on the CPU; best QPS at recall@100 >= 0.95 per method.
3. **serving**: the demo's serving graph (``runs/demo``'s checkpoint; without one, a short run of
   the demo's configuration) exported for the CPU and for CUDA; the CUDA graph's latency at
   batch 1 / 16 / 256 and its parity with the CPU graph (same ids, values within 1e-4).

Then one table, one row per check, and exit status 0 only when every check passed. Without CUDA
it fails at once with a message saying so (it never skips): ``--dry-run`` is the way to run the
steps on a machine without a GPU (``tests/test_gpu_check.py`` does, at tiny sizes).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # the test suite's case generators (tests/ops) are imported by step 1
    sys.path.insert(0, REPO)

BATCHES = (1, 16, 256)
DRY_RUN_SERVING_BATCHES = (1, 4, 16)  # the serving step's dry run on a CPU: same code, smaller batches
NO_CUDA = ("make gpu-check needs a CUDA GPU, and this machine has none: torch.cuda.is_available() is False "
           "(torch {torch}, CUDA build: {cuda}). Run it on a machine with one NVIDIA GPU and the CUDA wheels "
           "(`make gpu-check` installs fbgemm-gpu==1.8.0; a venv made with the CPU wheels needs `make distclean` "
           "first), or `benchmarks/gpu_check.py --dry-run` to run its steps on the CPU.")


@dataclass
class Row:
    """One line of the final table."""

    step: str
    check: str
    ok: bool
    result: str
    seconds: float = 0.0


@dataclass
class Report:
    rows: List[Row] = field(default_factory=list)

    def add(self, step: str, check: str, ok: bool, result: str, seconds: float = 0.0) -> None:
        self.rows.append(Row(step, check, ok, result, seconds))
        print(f"[{step}] {'ok  ' if ok else 'FAIL'} {check}: {result}", flush=True)

    def table(self) -> str:
        head = ("step", "check", "status", "result", "s")
        body = [(r.step, r.check, "ok" if r.ok else "FAIL", r.result, f"{r.seconds:.1f}") for r in self.rows]
        widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
        line = "+-" + "-+-".join("-" * w for w in widths) + "-+"
        fmt = lambda cells: "| " + " | ".join(f"{c:<{w}}" for c, w in zip(cells, widths)) + " |"  # noqa: E731
        return "\n".join([line, fmt(head), line, *(fmt(b) for b in body), line])

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)


def require_cuda() -> None:
    """Exits with status 2 and a message naming the problem when CUDA (or Triton) is missing."""
    if not torch.cuda.is_available():
        raise SystemExit(NO_CUDA.format(torch=torch.__version__, cuda=torch.version.cuda or "none, a CPU-only wheel"))
    try:
        import triton  # noqa: F401
    except ImportError as err:
        raise SystemExit(f"make gpu-check: triton is not importable ({err}); `make venv` installs triton==3.7.1")
    from silverrec.ops.triton import CUDA_IMPLS

    if not CUDA_IMPLS:
        raise SystemExit("make gpu-check: no CUDA kernel of torch.ops.silverrec is registered")


# --- step 1: ops -------------------------------------------------------------------------------


def _op_cases(dry_run: bool) -> Dict[str, List[Tuple[Callable, tuple]]]:
    """op name -> [(reference, args)] from the test suite's random-case generators (CPU tensors)."""
    from silverrec.ops import reference as R
    from tests.ops import bloom_cases
    from tests.ops import test_exact_filter as TE
    from tests.ops import test_ivf_int8_topk as T8
    from tests.ops import test_ivf_rescore_topk as TR
    from tests.ops import test_ivf_search as TS
    from tests.ops import test_ivf_select_probes as TP
    from tests.ops import test_pack_id_mask as TM
    from tests.ops import test_quantize_int8_rowwise as TQ

    n = 2 if dry_run else 6
    cases: Dict[str, List[Tuple[Callable, tuple]]] = {
        "quantize_int8_rowwise": [(R.quantize_int8_rowwise_reference, (TQ.random_rows(i, 5 + 40 * i, 64 + i, kind),))
                                  for i, kind in enumerate(("gauss", "heavy", "ties", "zeros")[: n])],
        "ivf_select_probes": [(R.ivf_select_probes_reference,
                               TP.random_case(i, 8, 30 + i, 900, 3, 50 * i, 12, density=(0.05, 0.5, 1.0)[i % 3],
                                              with_mask=i % 2 == 0, coarse=i % 2 == 1)) for i in range(n)],
        "ivf_int8_topk": [(R.ivf_int8_topk_reference,
                           T8.random_case(i, B, 2000, 64, 40, 8, 100, density=0.3, code_range=(3, 127)[i % 2],
                                          with_mask=i % 2 == 0)) for i, B in enumerate((1, 16, 256, 3, 40, 7)[: n])],
        "ivf_rescore_topk": [(R.ivf_rescore_topk_reference, TR.random_case(i, 16, 500, 64, 150, 100, integer=i % 2 == 1,
                                                                           bf16=i % 2 == 0)) for i in range(n)],
        "ivf_search": [(R.ivf_search_reference,
                        TS.random_case(i, B, 3000, 64, 50, 20, 30, n_probe=4, min_rows=100, max_probe=12,
                                       density=(None, 0.1, 0.01)[i % 3], integer=i % 2 == 1))
                       for i, B in enumerate((1, 16, 256, 5, 64, 2)[: n])],
        "bloom_search": [(R.bloom_search_reference, bloom_cases.random_case(i)) for i in range(n)],
        "exact_filter": [(R.exact_filter_reference, TE.random_case(i, 16, 100, 8, 30, 3, 12)) for i in range(n)],
        "pack_id_mask": [(R.pack_id_mask_reference, TM.random_case(i, 16, 5000, 5000, 0.3, i % 2 == 1, True))
                         for i in range(n)],
    }
    if hasattr(R, "held_terms_reference"):
        cases["held_terms"] = [(R.held_terms_reference, _held_terms_case(i)) for i in range(n)]
    if hasattr(R, "ivf_search_bloom_reference"):
        from tests.ops import test_ivf_search_bloom as TB

        cases["ivf_search_bloom"] = [(R.ivf_search_bloom_reference,
                                      TB.bloom_case(i, B, 2000, 40, 20, 4, 100, 10, T=2 if i % 2 else 0))
                                     for i, B in enumerate((1, 16, 64, 3)[: n])]
    cases["ivf_search"] += [(R.ivf_search_reference, TS.id_order(c, layout)[0])
                            for (_, c), layout in zip(cases["ivf_search"][1:3], ("bool", "bitmap"))]
    return cases


def _held_terms_case(seed: int, N: int = 5000, T: int = 200, E: int = 16) -> tuple:
    """Random ``held_terms`` inputs: exact bit rows for ~10% of the terms, sorted posting lists
    for the rest, candidate rows and plan terms with -1 padding and out-of-range ids."""
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(-2**62, 2**62, (E, (N + 63) // 64), generator=g)
    term_rows = torch.where(torch.rand(T, generator=g) < 0.1, torch.randint(0, E, (T,), generator=g), -1)
    counts = torch.randint(0, 50, (T,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)])
    postings = torch.cat([torch.sort(torch.randperm(N, generator=g)[:c]).values for c in counts.tolist()]).int()
    rows = torch.randint(-1, N, (16, 100), generator=g)
    terms = torch.randint(-1, T + 2, (16, 12), generator=g)
    return bits, term_rows, offsets, postings, rows, terms, N


def _same(got, want) -> Optional[str]:
    got = got if isinstance(got, (tuple, list)) else (got,)
    want = want if isinstance(want, (tuple, list)) else (want,)
    for i, (a, b) in enumerate(zip(got, want)):
        a = a.cpu()
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            return f"output {i} differs ({a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)})"
    return None


def _to(args: tuple, device: str) -> tuple:
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


def check_ops(report: Report, device: str, dry_run: bool) -> None:
    from silverrec.ops.triton import CUDA_IMPLS

    cases = _op_cases(dry_run)
    for op in CUDA_IMPLS:
        t0 = time.perf_counter()
        if op not in cases or not cases[op]:
            # an op without cases here is a failure, not a skip: add its cases to _op_cases
            report.add("ops", op, False, "no CUDA parity cases in benchmarks/gpu_check.py", 0.0)
            continue
        fn = getattr(torch.ops.silverrec, op)
        bad = []
        for i, (ref, args) in enumerate(cases[op]):
            try:
                diff = _same(fn(*_to(args, device)), ref(*args))
            except Exception as err:  # noqa: BLE001 - reported in the table
                diff = f"{type(err).__name__}: {err}"
            if diff:
                bad.append(f"case {i}: {diff}")
        report.add("ops", f"{op} == reference", not bad, "; ".join(bad)[:200] or f"{len(cases[op])} cases equal",
                   time.perf_counter() - t0)
    _check_scans(report, device, cases["ivf_int8_topk"], dry_run)


def _check_scans(report: Report, device: str, cases: list, dry_run: bool) -> None:
    """Both ivf_int8_topk scans forced (equal to the reference), and timed at batch 1 / 16 / 256."""
    from silverrec.ops import reference as R
    from tests.ops import test_ivf_int8_topk as T8

    t0 = time.perf_counter()
    if device == "cpu":  # dry run: the launchers need Triton's GPU backend, or the interpreter
        report.add("ops", "ivf_int8_topk scans: per_query vs grouped", True, "not timed on the CPU (dry run)", 0.0)
        return
    from silverrec.ops.triton.ivf_int8_topk import ivf_int8_topk_cuda, scan_kernel

    bad, times = [], []
    for i, (_, args) in enumerate(cases):
        for kernel in ("per_query", "grouped"):
            diff = _same(ivf_int8_topk_cuda(*_to(args, device), kernel=kernel), R.ivf_int8_topk_reference(*args))
            if diff:
                bad.append(f"{kernel} case {i}: {diff}")
    for B in BATCHES:  # serving-like: 100k rows, 400 clusters, 8 probed, K0 = 150
        args = _to(T8.random_case(B, B, 100_000, 64, 400, 8, 150, density=1.0, code_range=127, with_mask=False), device)
        ms = {}
        for kernel in ("per_query", "grouped"):
            ms[kernel] = _cuda_ms(lambda: ivf_int8_topk_cuda(*args, kernel=kernel))
        times.append(f"B={B}: per_query {ms['per_query']:.2f} ms, grouped {ms['grouped']:.2f} ms "
                     f"(auto: {scan_kernel(B, 8, 150)})")
    report.add("ops", "ivf_int8_topk: both scans == reference", not bad, "; ".join(bad)[:200] or "equal",
               time.perf_counter() - t0)
    report.add("ops", "ivf_int8_topk scan times (100k rows, 8 of 400 clusters, K0=150)", True, "; ".join(times))


def _cuda_ms(fn: Callable[[], object], repeats: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        t.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(t))


# --- step 2: ann -------------------------------------------------------------------------------


def check_ann(report: Report, device: str, dry_run: bool, workdir: str, timeout_s: float) -> None:
    t0 = time.perf_counter()
    out = os.path.join(workdir, "ann.json")
    size = ["--n", "3000", "--d", "16", "--queries", "32", "--queries-b1", "8", "--nprobe", "4", "16"] if dry_run else \
        ["--n", "200000", "--d", "64", "--queries", "512", "--queries-b1", "64", "--nprobe", "8", "32", "128", "512"]
    cmd = [sys.executable, os.path.join(REPO, "benchmarks", "ann.py"), "--device", device, "--datasets", "clustered",
           "--batches", *map(str, BATCHES), "--filters", "1.0", "0.1", "--no-hnsw", "--rounds", "1", "--plot", "",
           "--json", out, *size]
    try:
        proc = subprocess.run(cmd, cwd=os.path.join(REPO, "benchmarks"), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        report.add("ann", "benchmarks/ann.py", False, f"timed out after {timeout_s:.0f} s", time.perf_counter() - t0)
        return
    if proc.returncode != 0 or not os.path.exists(out):
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        report.add("ann", "benchmarks/ann.py", False, f"exit {proc.returncode}: {' / '.join(tail)}"[:300],
                   time.perf_counter() - t0)
        return
    with open(out) as f:
        rows = json.load(f)["rows"]
    for filt in ("none", "10%"):
        for B in BATCHES:
            sel = [r for r in rows if r["filter"] == filt and r["batch"] == B and r["recall"] >= 0.95]
            best: Dict[str, float] = {}
            for r in sel:
                best[r["method"]] = max(best.get(r["method"], 0.0), r["qps"])
            ours = best.pop("silverrec IVF-INT8", None)
            rival = max(best.items(), key=lambda kv: kv[1]) if best else None
            text = (f"silverrec {ours:.0f} QPS" if ours else "silverrec below recall 0.95") + \
                (f" vs {rival[0]} {rival[1]:.0f} QPS" if rival else "") + \
                (f" ({ours / rival[1]:.2f}x)" if ours and rival else "")
            report.add("ann", f"clustered {size[1]} items, filter {filt}, batch {B}, best QPS at recall@100 >= 0.95",
                       ours is not None, text)
    report.rows[-1].seconds = time.perf_counter() - t0


# --- step 3: serving ---------------------------------------------------------------------------


def _demo_checkpoint(demo_dir: str, workdir: str, dry_run: bool, checkpoint: Optional[str]) -> Tuple[str, str]:
    """The demo's latest checkpoint, or a short run of the demo's configuration (and where it came from)."""
    from silverrec.train.checkpoint import latest_checkpoint

    if checkpoint:
        return checkpoint, checkpoint
    found = latest_checkpoint(os.path.join(demo_dir, "checkpoints")) if os.path.isdir(demo_dir) else None
    if found and not dry_run:
        return found, f"{demo_dir}'s checkpoint"
    from hydra import compose, initialize_config_module

    from silverrec.train.demo import DEMO_OVERRIDES
    from silverrec.train.train import run_training

    steps = ["debug=cpu_tiny", "trainer.max_steps=4"] if dry_run else ["trainer.max_steps=300"]
    with initialize_config_module(config_module="silverrec.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"paths.output_dir={os.path.join(workdir, 'demo')}",
                                                      "trainer.eval_every=0", "~logger", *DEMO_OVERRIDES, *steps])
    report = run_training(cfg)
    return report["train"]["checkpoint"], "a short run of the demo's configuration" + (" (dry run: tiny)" if dry_run else "")


def check_serving(report: Report, device: str, dry_run: bool, workdir: str, demo_dir: str,
                  checkpoint: Optional[str] = None) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from silverrec.retrieval.serving_graph import ServingConfig
    from silverrec.serve import Retriever
    from silverrec.train.checkpoint import load_checkpoint
    from silverrec.train.export import example_inputs, export_serving
    from silverrec.train.trainer import load_two_tower

    t0 = time.perf_counter()
    ckpt, source = _demo_checkpoint(demo_dir, workdir, dry_run, checkpoint)
    payload = load_checkpoint(ckpt)
    dataset = instantiate(OmegaConf.create(payload["data_config"]))
    model = load_two_tower(payload)
    config = ServingConfig(k=20 if dry_run else 100, candidates_per_task=30 if dry_run else 100,
                           num_clusters=12 if dry_run else None)
    paths = {d: os.path.join(workdir, f"serving_{d}.pt2") for d in ("cpu", device)}
    metas = {d: export_serving(model, dataset, config, p, {}, device=d) for d, p in paths.items()}
    report.add("serving", f"export for {device} ({source})", metas[device]["device"] == device,
               f"{os.path.getsize(paths[device]) / 2**20:.1f} MiB, device {metas[device]['device']}",
               time.perf_counter() - t0)
    cpu, dev = Retriever(paths["cpu"]), Retriever(paths[device], device=device)
    first = dataset.schema.filterable_features[0]
    flts = ["", f"{first.name}:{first.vocab[0]}", f"NOT {first.name}:{first.vocab[0]}"]
    for B in DRY_RUN_SERVING_BATCHES if dry_run else BATCHES:
        inputs = example_inputs(dataset, metas["cpu"], B, [flts[i % 3] for i in range(B)])[:5]
        want, got = cpu.search(*inputs), dev.search(*inputs)
        same_ids = bool(torch.equal(got[0], want[0]) and torch.equal(got[3], want[3]))
        ok = want[0] >= 0
        vdiff = float((got[1] - want[1])[ok].abs().max()) if bool(ok.any()) else 0.0
        report.add("serving", f"parity with the CPU graph, batch {B}", same_ids and vdiff <= 1e-4,
                   f"ids {'equal' if same_ids else 'DIFFER'} ({float((got[0] == want[0]).float().mean()):.4f} equal), "
                   f"max |value diff| {vdiff:.2e}")
        times = []
        dev.search(*inputs)
        for _ in range(2 if dry_run else 30):
            t1 = time.perf_counter()
            dev.search(*inputs)  # returns CPU tensors: the time includes the copies and the sync
            times.append(time.perf_counter() - t1)
        report.add("serving", f"latency on {device}, batch {B}", True,
                   f"median {1000 * np.median(times):.2f} ms, p90 {1000 * np.percentile(times, 90):.2f} ms")
    report.rows[-1].seconds = time.perf_counter() - t0


# --- main --------------------------------------------------------------------------------------

STEPS = ("ops", "ann", "serving")


def run(steps: Sequence[str], dry_run: bool, demo_dir: str, ann_timeout_s: float = 240.0,
        checkpoint: Optional[str] = None) -> Report:
    """Runs ``steps`` (on the CPU with tiny sizes when ``dry_run``) and returns the report."""
    device = "cpu" if dry_run else "cuda"
    if not dry_run:
        require_cuda()
    report = Report()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as workdir:
        for step, fn in (("ops", lambda: check_ops(report, device, dry_run)),
                         ("ann", lambda: check_ann(report, device, dry_run, workdir, ann_timeout_s)),
                         ("serving", lambda: check_serving(report, device, dry_run, workdir, demo_dir, checkpoint))):
            if step not in steps:
                continue
            try:
                fn()
            except Exception as err:  # noqa: BLE001 - one step failing still lets the others run
                tail = traceback.format_exc().strip().splitlines()[-1]
                report.add(step, "step crashed", False, f"{type(err).__name__}: {tail}"[:300])
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="every step on the CPU at tiny sizes (no GPU needed)")
    p.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    p.add_argument("--demo-dir", default=os.path.join(REPO, "runs", "demo"))
    p.add_argument("--checkpoint", default=None, help="serve this training checkpoint instead of the demo's")
    p.add_argument("--preflight", action="store_true", help="only check that CUDA and Triton are there")
    args = p.parse_args(argv)
    if args.preflight:
        require_cuda()
        print(f"gpu-check preflight: CUDA on {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
        return 0
    t0 = time.perf_counter()
    report = run(args.steps, args.dry_run, args.demo_dir, checkpoint=args.checkpoint)
    title = "gpu-check" + (" (DRY RUN on the CPU: no GPU claim)" if args.dry_run else f" on {torch.cuda.get_device_name(0)}")
    print(f"\n{title}, {time.perf_counter() - t0:.0f} s\n{report.table()}")
    if not report.ok:
        print(f"gpu-check FAILED: {sum(not r.ok for r in report.rows)} check(s) failed", file=sys.stderr)
        return 1
    print("gpu-check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
