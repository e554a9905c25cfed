"""Random ``bloom_search`` inputs (shared by the op tests and the Triton interpreter script)."""
import random
from typing import List, Tuple

import torch
from torch import Tensor

from silverrec.ops.reference import (
    BLOOM_AND,
    BLOOM_FALSE,
    BLOOM_NOP,
    BLOOM_NOT_ROWS,
    BLOOM_NOT_TERM,
    BLOOM_OR,
    BLOOM_TERM,
    BLOOM_TRUE,
)

Args = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def _program(rng: random.Random, depth: int, num_bits: int, num_terms: int, H: int) -> List[Tuple[int, int, List[int]]]:
    """A random well-formed postfix program: ``(opcode, term, hash positions)`` triples."""
    if depth == 0 or rng.random() < 0.3:
        kind = rng.choice([BLOOM_TERM, BLOOM_TERM, BLOOM_NOT_TERM, BLOOM_NOT_TERM, BLOOM_NOT_ROWS, BLOOM_FALSE, BLOOM_TRUE])
        if kind == BLOOM_NOT_TERM and num_terms == 0:
            kind = BLOOM_TRUE
        term = rng.randrange(num_terms) if kind in (BLOOM_TERM, BLOOM_NOT_TERM) and num_terms else -1
        hashes = [rng.randrange(num_bits) for _ in range(H)] if kind in (BLOOM_TERM, BLOOM_NOT_ROWS) else [0] * H
        return [(kind, term, hashes)]
    op = rng.choice([BLOOM_AND, BLOOM_OR])
    return _program(rng, depth - 1, num_bits, num_terms, H) + _program(rng, depth - 1, num_bits, num_terms, H) + [
        (op, -1, [0] * H)
    ]


def random_plans(rng: random.Random, gen: torch.Generator, n: int, B: int) -> Tuple[Tensor, ...]:
    """Random bits over n rows, posting lists and B plans (NOP padding): ``bits, opcodes, terms,
    hashes, posting_offsets, posting_rows``."""
    W = (n + 63) // 64
    M, H, T = rng.randint(1, 24), rng.randint(1, 4), rng.randint(0, 12)
    density = rng.choice([0.05, 0.5, 0.95])
    words = torch.randint(-(2**63), 2**63 - 1, (M, W), generator=gen, dtype=torch.int64)
    keep = (torch.rand(M, W * 64, generator=gen) < density).reshape(M, W, 64)
    bits = words & (keep.long() << torch.arange(64)).sum(-1)
    bits[:, -1] &= (1 << (n - 64 * (W - 1))) - 1 if n % 64 else -1  # rows >= N hold no bits
    posting_rows, offsets = [], [0]
    for _ in range(T):
        rows = sorted(rng.sample(range(n), rng.randint(0, n)))
        posting_rows += rows
        offsets.append(len(posting_rows))
    programs = [_program(rng, rng.randint(0, 3), M, T, H) for _ in range(B)]
    L = max(len(p) for p in programs) + rng.randint(0, 2)
    opcodes = torch.full((B, L), BLOOM_NOP, dtype=torch.int64)
    terms = torch.full((B, L), -1, dtype=torch.int64)
    hashes = torch.zeros(B, L, H, dtype=torch.int64)
    for b, prog in enumerate(programs):
        slots = sorted(rng.sample(range(L), len(prog)))  # NOPs may sit anywhere
        for s, (op, t, h) in zip(slots, prog):
            opcodes[b, s], terms[b, s], hashes[b, s] = op, t, torch.tensor(h)
    return (bits, opcodes, terms, hashes, torch.tensor(offsets, dtype=torch.int64),
            torch.tensor(posting_rows, dtype=torch.int32))


def random_case(seed: int, max_rows: int = 300, max_batch: int = 4) -> Args:
    """Random bits, postings, clusters, probes and plans (NOP padding, -1 probes, repeats)."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    n = rng.randint(1, max_rows)
    B = rng.randint(1, max_batch)
    bits, opcodes, terms, hashes, offsets, posting_rows = random_plans(rng, gen, n, B)
    C = rng.randint(1, 6)
    cuts = sorted(rng.randint(0, n) for _ in range(C - 1))
    cluster_offsets = torch.tensor([0] + cuts + [n], dtype=torch.int64)
    P = rng.randint(1, 4)
    probe = torch.tensor([[rng.randint(-1, C - 1) for _ in range(P)] for _ in range(B)], dtype=torch.int64)
    return (bits, opcodes, terms, hashes, offsets, posting_rows, probe, cluster_offsets)
