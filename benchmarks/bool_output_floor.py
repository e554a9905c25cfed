"""The memory floor of a dense bool filter result: what writing ``[B, N]`` bools costs by itself.

``BloomIndex.search`` returns bool ``[B, N]`` (16 MB at batch 16 on 1M items). This script times,
best of ``--repeats``, writing such a tensor three ways: ``fill_`` into an existing (already
faulted-in) tensor, a fresh ``torch.ones`` (page faults included), and ``unpack_mask`` of a packed
``[B, ceil(N/64)]`` result (what ``search`` does after the kernel). It prints the per-batch
budget that a queries/s target implies, e.g. 100x the inverted index's 311 queries/s for
``A AND B`` in ``benchmarks/bloom.py``:

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bool_output_floor.py --target-qps 31100
"""
import argparse
import time

import torch

from silverrec.retrieval.packed_mask import unpack_mask


def best_ms(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--target-qps", type=float, default=31_100.0, help="queries/s whose per-batch budget to print")
    args = p.parse_args()
    B, N = args.batch, args.items
    packed = torch.randint(-(2**62), 2**62, (B, (N + 63) // 64), generator=torch.Generator().manual_seed(0))
    out = torch.empty(B, N, dtype=torch.bool)
    print(f"threads {torch.get_num_threads()}, bool [{B}, {N}] = {B * N / 2**20:.1f} MiB")
    print("| write | ms per batch |\n|---|---:|")
    print(f"| fill_ into an existing tensor | {best_ms(lambda: out.fill_(True), args.repeats):.3f} |")
    print(f"| new tensor (torch.ones) | {best_ms(lambda: torch.ones(B, N, dtype=torch.bool), args.repeats):.3f} |")
    print(f"| unpack_mask of the packed result | {best_ms(lambda: unpack_mask(packed, N), args.repeats):.3f} |")
    print(f"| budget at {args.target_qps:,.0f} queries/s | {1e3 * B / args.target_qps:.3f} |")


if __name__ == "__main__":
    main()
