"""Plain-torch references (the spec) of the filter ops: ``bloom_search``, ``held_terms``, ``exact_filter`` and
``pack_id_mask``, with the opcodes of a filter plan. See :mod:`silverrec.ops.reference`."""
import torch
from torch import Tensor

# --- bloom_search ---
# Opcodes of a filter plan: a postfix program evaluated on a stack of item sets.
BLOOM_NOP = 0  # padding: does nothing
BLOOM_TERM = 1  # push: items whose Bloom signature has all H bits hashes[b, l, :] set
BLOOM_NOT_TERM = 2  # push: items NOT holding term terms[b, l], exactly (from the posting lists)
BLOOM_AND = 3  # pop two, push their intersection
BLOOM_OR = 4  # pop two, push their union
BLOOM_FALSE = 5  # push: no item (a value never seen in the item table)
BLOOM_TRUE = 6  # push: every item (the empty filter)
BLOOM_NOT_ROWS = 7  # push: items NOT having all H bits hashes[b, l, :] set (exact on an exact-term row)
BLOOM_NUM_OPCODES = 8


def bloom_search_reference(
    bits: Tensor,
    opcodes: Tensor,
    terms: Tensor,
    hashes: Tensor,
    posting_offsets: Tensor,
    posting_rows: Tensor,
    probe: Tensor,
    cluster_offsets: Tensor,
) -> Tensor:
    """Evaluates B filter plans over the items of the probed clusters; returns packed masks.

    Items are index rows (cluster-sorted). Row ``r`` is bit ``r % 64`` (LSB = 0) of word
    ``r // 64``; the Bloom signatures are bit-sliced: bit ``r % 64`` of ``bits[p, r // 64]`` is
    bit ``p`` of row ``r``'s signature.

    Each plan ``b`` is a postfix program ``opcodes[b, :]`` (see the ``BLOOM_*`` opcodes) over a
    stack of item sets; it must leave exactly one set, the result. ``TERM`` tests the Bloom
    signature (never misses an item holding the term; may add false positives), ``NOT_TERM``
    is exact (the term's posting list), so a plan in negation normal form never misses a match.
    ``bits`` may hold, after the M' signature rows, exact bitmap rows of frequent terms: a
    ``TERM`` whose H positions all name such a row is exact, and ``NOT_ROWS`` on it is an exact
    ``NOT`` that reads one row instead of a long posting list.
    Rows outside ``[cluster_offsets[c], cluster_offsets[c+1])`` for every ``c = probe[b, p] >= 0``
    get bit 0 (``probe[b, p] == -1`` is padding). To evaluate over all N items, pass
    ``probe = [[0]] * B`` and ``cluster_offsets = [0, N]``.

    Args:
        bits (Tensor): int64 ``[M, W]`` bit rows: signature bits, then any exact term rows.
        opcodes (Tensor): int64 ``[B, L]`` programs, padded with ``BLOOM_NOP``.
        terms (Tensor): int64 ``[B, L]`` term id of ``NOT_TERM`` (and ``TERM``) instructions, else -1.
        hashes (Tensor): int64 ``[B, L, H]`` rows of ``bits`` read by ``TERM``/``NOT_ROWS`` instructions.
        posting_offsets (Tensor): int64 ``[T+1]``; term t is held by rows
            ``posting_rows[posting_offsets[t]:posting_offsets[t+1]]`` (ascending).
        posting_rows (Tensor): int32 ``[nnz]`` (rows < 2^31; 4 bytes per listed holder).
        probe (Tensor): int64 ``[B, P]`` cluster ids per query, -1 for padding.
        cluster_offsets (Tensor): int64 ``[C+1]`` nondecreasing, ``cluster_offsets[C] <= 64 * W``.

    Returns:
        Tensor: int64 ``[B, W]`` packed masks.
    """
    if posting_rows.dtype != torch.int32:
        raise ValueError(f"bloom_search: posting_rows must be int32, got {posting_rows.dtype}")
    M, W = bits.shape
    B, L = opcodes.shape
    T = posting_offsets.numel() - 1
    C = cluster_offsets.numel() - 1
    n_rows = 64 * W
    shifts = torch.arange(64, dtype=torch.int64)
    out = torch.zeros(B, W, dtype=torch.int64)

    def unpack(words: Tensor) -> Tensor:  # [W] int64 -> [64 W] bool
        return ((words[:, None] >> shifts) & 1).bool().reshape(-1)

    for b in range(B):
        stack = []
        for l in range(L):
            op = int(opcodes[b, l])
            if op == BLOOM_NOP:
                continue
            if op in (BLOOM_TERM, BLOOM_NOT_ROWS):
                pos = hashes[b, l]
                if bool(((pos < 0) | (pos >= M)).any()):
                    raise ValueError(f"bloom_search: plan {b} instruction {l}: hash positions {pos.tolist()} outside [0, {M})")
                member = torch.ones(n_rows, dtype=torch.bool)
                for p in pos.tolist():
                    member &= unpack(bits[p])
                stack.append(member if op == BLOOM_TERM else ~member)
            elif op == BLOOM_NOT_TERM:
                t = int(terms[b, l])
                if not 0 <= t < T:
                    raise ValueError(f"bloom_search: plan {b} instruction {l}: term {t} outside [0, {T})")
                member = torch.ones(n_rows, dtype=torch.bool)
                member[posting_rows[posting_offsets[t] : posting_offsets[t + 1]]] = False
                stack.append(member)
            elif op in (BLOOM_AND, BLOOM_OR):
                if len(stack) < 2:
                    raise ValueError(f"bloom_search: plan {b} instruction {l}: AND/OR needs two operands")
                y, x = stack.pop(), stack.pop()
                stack.append(x & y if op == BLOOM_AND else x | y)
            elif op in (BLOOM_FALSE, BLOOM_TRUE):
                stack.append(torch.full((n_rows,), op == BLOOM_TRUE, dtype=torch.bool))
            else:
                raise ValueError(f"bloom_search: plan {b} instruction {l}: unknown opcode {op}")
        if len(stack) != 1:
            raise ValueError(f"bloom_search: plan {b} leaves {len(stack)} values on the stack, expected 1")
        in_range = torch.zeros(n_rows, dtype=torch.bool)
        for c in probe[b].tolist():
            if c == -1:
                continue
            if not 0 <= c < C:
                raise ValueError(f"bloom_search: probe[{b}] has cluster {c} outside [-1, {C})")
            start, end = int(cluster_offsets[c]), int(cluster_offsets[c + 1])
            if not 0 <= start <= end <= n_rows:
                raise ValueError(f"bloom_search: cluster {c} rows [{start}, {end}) outside [0, {n_rows}]")
            in_range[start:end] = True
        selected = (stack[0] & in_range).reshape(W, 64).long()
        out[b] = (selected << shifts).sum(dim=1)  # distinct bits: the sum is the bitwise OR
    return out


# --- packed rows ---


def rows_to_words(rows: Tensor, num_words: int) -> Tensor:
    """Packed int64 ``[B, num_words]`` words with the bits of each query's listed rows set (row ``r``
    is bit ``r % 64`` of word ``r // 64``), e.g. a user's excluded items as a mask to clear.

    Sort-based, fixed shapes, no host sync (also the serving graph's and the CUDA path's):
    repeated rows count once, so the scatter's sum of distinct bits is their OR.

    Args:
        rows (Tensor): int64 ``[B, E]`` rows, -1 padding, repeats allowed; rows outside
            ``[0, 64 * num_words)`` are ignored.
        num_words (int): W.

    Returns:
        Tensor: int64 ``[B, W]``.

    Example::

        >>> rows_to_words(torch.tensor([[1, 3, 1, -1], [64, -1, -1, -1]]), 2).tolist()
        [[10, 0], [0, 1]]
    """
    s = rows.sort(dim=1).values
    first = torch.arange(s.shape[1], device=s.device) == 0  # roll, not slicing: E stays symbolic under export
    ok = (s >= 0) & (s < 64 * num_words) & ((s != s.roll(1, dims=1)) | first)
    r = s.clamp(0, max(64 * num_words - 1, 0))
    bits = torch.where(ok, torch.ones_like(r) << (r % 64), torch.zeros_like(r))
    out = torch.zeros((rows.shape[0], num_words), dtype=torch.int64, device=rows.device)
    return out.scatter_add(1, r // 64, bits)


# --- held_terms ---


def held_terms_reference(bits: Tensor, term_rows: Tensor, posting_offsets: Tensor, posting_rows: Tensor, rows: Tensor,
                         terms: Tensor, num_rows: int) -> Tensor:
    """Which plan terms each candidate row holds: the ``held`` input of :func:`exact_filter_reference`.

    Term ``t`` is held by row ``r`` iff, when ``term_rows[t] >= 0`` (a frequent term with an exact
    bit row), bit ``r % 64`` of ``bits[term_rows[t], r // 64]`` is set, else iff ``r`` is in the
    term's ascending posting list ``posting_rows[posting_offsets[t]:posting_offsets[t + 1]]``.
    Term ids outside ``[0, T)`` and rows outside ``[0, num_rows)`` are never held.

    Pure torch with a fixed number of binary-search steps (from the posting array's length, a
    static shape): no host sync, so this is also the CUDA implementation.

    Args:
        bits (Tensor): int64 ``[E, W]`` bit rows (bit-sliced: row ``r`` is bit ``r % 64`` of word ``r // 64``).
        term_rows (Tensor): int64 ``[T]`` each term's exact row in ``bits``, or -1.
        posting_offsets (Tensor): int64 ``[T + 1]``; posting_rows (Tensor): int32 ``[nnz]``.
        rows (Tensor): int64 ``[B, M]`` candidate rows (-1 padding).
        terms (Tensor): int64 ``[B, L]`` each query's plan term ids (-1 for none).
        num_rows (int): N, the rows of the index.

    Returns:
        Tensor: int64 ``[B, M, L]``: ``terms[b, l]`` where row ``rows[b, m]`` holds it, else -1.
    """
    if posting_rows.dtype != torch.int32:
        raise ValueError(f"held_terms: posting_rows must be int32, got {posting_rows.dtype}")
    T, nnz = term_rows.shape[0], posting_rows.shape[0]
    r = rows.unsqueeze(2)  # [B, M, 1]
    t = terms.unsqueeze(1)  # [B, 1, L]
    ok = (t >= 0) & (t < T) & (r >= 0) & (r < num_rows)
    if T == 0:
        return torch.full((rows.shape[0], rows.shape[1], terms.shape[1]), -1, dtype=torch.int64, device=rows.device)
    tc = t.clamp(0, T - 1)
    rc = r.clamp(0, max(64 * bits.shape[1] - 1, 0))
    exact = term_rows[tc]  # [B, 1, L]
    if bits.shape[0] > 0:
        word = bits[exact.clamp(0, bits.shape[0] - 1), rc // 64]  # [B, M, L]
        in_row = ((word >> (rc % 64)) & 1) == 1
    else:
        in_row = torch.zeros_like(ok)
    lo = posting_offsets[tc].expand(-1, rows.shape[1], -1)
    hi = posting_offsets[tc + 1].expand(-1, rows.shape[1], -1)
    end = hi
    listed = torch.zeros_like(ok)
    if nnz > 0:
        for _ in range(max(1, nnz.bit_length())):  # first position in [lo, hi) whose row is >= r
            mid = (lo + hi) // 2
            below = (posting_rows[mid.clamp(max=nnz - 1)] < r) & (lo < hi)
            lo = torch.where(below, mid + 1, lo)
            hi = torch.where(below | (lo >= hi), hi, mid)
        listed = (lo < end) & (posting_rows[lo.clamp(max=nnz - 1)] == r)
    held = ok & torch.where(exact >= 0, in_row, listed)
    return torch.where(held, t, -1)


# --- exact_filter ---


def exact_filter_reference(opcodes: Tensor, terms: Tensor, held: Tensor) -> Tensor:
    """Spec of ``torch.ops.silverrec.exact_filter``: B filter programs run exactly on M candidates each.

    Candidate ``m`` of query ``b`` holds the term ids ``held[b, m, :]`` (-1 padding). The program
    ``opcodes[b]`` (postfix, ``BLOOM_*``, padded with ``BLOOM_NOP``) runs on a stack of booleans:
    ``TERM`` pushes whether the candidate holds ``terms[b, l]`` (exactly: the term ids are
    compared, no Bloom signature), ``NOT_TERM`` and ``NOT_ROWS`` push the negation, ``TRUE`` /
    ``FALSE`` push constants, ``AND`` / ``OR`` pop two and push their conjunction / disjunction,
    ``NOP`` does nothing. The result is the bottom of the stack after the program (False for a
    program of only ``NOP``); for a well-formed program (as ``compile_plans`` makes) that is its
    one value. A term id < 0 is held by no candidate.

    Args:
        opcodes (Tensor): int64 ``[B, L]``.
        terms (Tensor): int64 ``[B, L]`` term ids of ``TERM`` / ``NOT_*`` instructions (else -1).
        held (Tensor): int64 ``[B, M, W]`` term ids of each candidate, -1 padding.

    Returns:
        Tensor: bool ``[B, M]``, True where the candidate satisfies its query's filter.

    Example::

        >>> ops = torch.tensor([[BLOOM_TERM, BLOOM_NOT_TERM, BLOOM_AND]])
        >>> exact_filter_reference(ops, torch.tensor([[3, 5, -1]]), torch.tensor([[[3, -1], [3, 5], [5, -1]]]))
        tensor([[ True, False, False]])
    """
    B, L = opcodes.shape
    member = ((held.unsqueeze(2) == terms[:, None, :, None]) & (held >= 0).unsqueeze(2)).any(-1)  # [B, M, L]
    K = member.shape[1]
    is_not = (opcodes == BLOOM_NOT_TERM) | (opcodes == BLOOM_NOT_ROWS)
    is_push = (opcodes == BLOOM_TERM) | is_not | (opcodes == BLOOM_TRUE) | (opcodes == BLOOM_FALSE)
    is_bin = (opcodes == BLOOM_AND) | (opcodes == BLOOM_OR)
    stacks = [[[] for _ in range(K)] for _ in range(B)]
    out = torch.zeros(B, K, dtype=torch.bool)
    for b in range(B):
        for m in range(K):
            stack = stacks[b][m]
            for l in range(L):
                op = int(opcodes[b, l])
                if bool(is_push[b, l]):
                    v = bool(member[b, m, l]) if op == BLOOM_TERM else not bool(member[b, m, l]) if bool(is_not[b, l]) \
                        else op == BLOOM_TRUE
                    stack.append(v)
                elif bool(is_bin[b, l]):
                    y, x = stack.pop(), stack.pop()
                    stack.append((x and y) if op == BLOOM_AND else (x or y))
            out[b, m] = bool(stack[0]) if stack else False
    return out.to(opcodes.device)


# --- pack_id_mask ---


def pack_id_mask_reference(mask: Tensor, row_to_id: Tensor) -> Tensor:
    """Spec of ``torch.ops.silverrec.pack_id_mask``: a filter mask in id order -> packed row order.

    Row ``r`` of an index holds the item with id ``row_to_id[r]``. Query ``b`` passes id ``i``
    iff ``mask[b, i]`` (bool ``[B, N]``, any nonzero byte), or, for a uint8 bitmap
    ``[B, ceil(N / 8)]`` in FAISS ``IDSelectorBitmap``'s layout, iff
    ``(mask[b, i >> 3] >> (i & 7)) & 1``. The output sets bit ``r % 64`` of word ``r // 64`` of
    row ``b`` iff query ``b`` passes ``row_to_id[r]``; bits of rows ``>= R`` are 0. Ids must lie
    in the mask's range (``[0, N)`` for bool, ``[0, 8 * bytes)`` for a bitmap).

    Args:
        mask (Tensor): bool ``[B, N]`` or uint8 ``[B, ceil(N / 8)]``, in id order.
        row_to_id (Tensor): int64 ``[R]`` id of each row.

    Returns:
        Tensor: int64 ``[B, ceil(R / 64)]`` packed row-order mask.

    Example::

        >>> pack_id_mask_reference(torch.tensor([[True, False, True]]), torch.tensor([2, 1, 0])).tolist()
        [[5]]
        >>> pack_id_mask_reference(torch.tensor([[0b110]], dtype=torch.uint8), torch.tensor([2, 1, 0])).tolist()
        [[3]]
    """
    if mask.dtype not in (torch.bool, torch.uint8) or mask.dim() != 2:
        raise ValueError(f"pack_id_mask: mask must be bool [B, N] or a uint8 bitmap [B, ceil(N/8)], got "
                         f"{mask.dtype} {tuple(mask.shape)}")
    if row_to_id.dtype != torch.int64 or row_to_id.dim() != 1:
        raise ValueError(f"pack_id_mask: row_to_id must be int64 [R], got {row_to_id.dtype} {tuple(row_to_id.shape)}")
    bound = mask.shape[1] * (8 if mask.dtype == torch.uint8 else 1)
    bad = ((row_to_id < 0) | (row_to_id >= bound)).nonzero().flatten()
    if bad.numel() > 0:
        r = int(bad[0])
        raise ValueError(f"pack_id_mask: row_to_id[{r}] = {int(row_to_id[r])} is outside the mask's ids [0, {bound})")
    B, R = mask.shape[0], row_to_id.shape[0]
    if mask.dtype == torch.uint8:
        passes = (mask[:, row_to_id >> 3] >> (row_to_id & 7).to(torch.uint8)) & 1  # [B, R]
    else:
        passes = mask[:, row_to_id]
    W = (R + 63) // 64
    bits = torch.zeros((B, W * 64), dtype=torch.int64, device=mask.device)
    bits[:, :R] = (passes != 0).to(torch.int64)
    shifts = torch.arange(64, dtype=torch.int64, device=mask.device)
    # distinct bits never carry, so the sum is the bitwise OR (bit 63 adds -2**63, still exact)
    return (bits.view(B, W, 64) << shifts).sum(dim=2)
