from typing import Iterator, Tuple

import pytest
import torch
from torch import Tensor, nn

from silverrec.models.over_arch import OverArch, OverArchConfig

KINDS = ["mlp", "mixture_of_logits"]


@pytest.fixture
def one_thread() -> Iterator[None]:
    # tiny models: one thread is several times faster than two contended ones
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_per_task_and_shared_user_embeddings(kind: str) -> None:
    torch.manual_seed(0)
    arch = OverArch(8, OverArchConfig(kind=kind, hidden=[16, 8], num_tasks=3, num_mixtures=2, mixture_dim=4))
    u, v = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    assert arch(u, v).shape == (2, 5, 3)
    shared = arch(u[:, 0], v)
    assert shared.shape == (2, 5, 3)
    # a shared user embedding is the same as giving every task that embedding
    torch.testing.assert_close(shared, arch(u[:, :1].expand(2, 3, 8), v))
    # candidates are scored independently of each other
    torch.testing.assert_close(arch(u, v[:, 2:3]), arch(u, v)[:, 2:3])


def test_bad_config_and_inputs() -> None:
    with pytest.raises(ValueError, match="kind"):
        OverArchConfig(kind="dot")
    with pytest.raises(ValueError, match="hidden"):
        OverArchConfig(hidden=[])
    with pytest.raises(ValueError, match="num_mixtures"):
        OverArchConfig(num_mixtures=0)
    arch = OverArch(4, OverArchConfig(num_tasks=2, hidden=[8]))
    with pytest.raises(ValueError, match=r"u \[B, 2, 4\] or \[B, 4\], got \[3, 3, 4\]"):
        arch(torch.randn(3, 3, 4), torch.randn(3, 5, 4))
    with pytest.raises(ValueError, match=r"v \[B, K, 4\], got \[3, 5\]"):
        arch(torch.randn(3, 4), torch.randn(3, 5))


def _xor_pairs(n: int, gen: torch.Generator) -> Tuple[Tensor, Tensor, Tensor]:
    """Label 1 when (u0*v0 > 0) == (u1*v1 > 0): uncorrelated with every bilinear form of (u, v)."""
    u, v = torch.randn(n, 4, generator=gen), torch.randn(n, 1, 4, generator=gen)
    y = (u[:, 0] * v[:, 0, 0] * u[:, 1] * v[:, 0, 1] > 0).float()
    return u, v, y


class _BestDotProduct(nn.Module):
    """The dot-product baseline: <A u, B v> + c with learned projections (any bilinear form)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 16), nn.Linear(4, 16)

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        return (self.a(u).unsqueeze(1) * self.b(v)).sum(-1, keepdim=True)


def _train_accuracy(model: nn.Module, steps: int = 300) -> float:
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        u, v, y = _xor_pairs(256, gen)
        loss = nn.functional.binary_cross_entropy_with_logits(model(u, v)[:, 0, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    u, v, y = _xor_pairs(4000, torch.Generator().manual_seed(1))
    with torch.no_grad():
        return ((model(u, v)[:, 0, 0] > 0).float() == y).float().mean().item()


def test_learns_a_rule_no_dot_product_can(one_thread: None) -> None:
    torch.manual_seed(0)
    dot = _train_accuracy(_BestDotProduct())
    mlp = _train_accuracy(OverArch(4, OverArchConfig(kind="mlp", hidden=[32, 32])))
    mol = _train_accuracy(OverArch(4, OverArchConfig(kind="mixture_of_logits", hidden=[32, 32], mixture_dim=4)))
    assert dot < 0.6, dot  # chance level
    assert mlp > 0.85, mlp
    assert mol > 0.85, mol


@pytest.mark.parametrize("kind", KINDS)
def test_bfloat16_agrees_with_float32(kind: str) -> None:
    torch.manual_seed(0)
    arch = OverArch(16, OverArchConfig(kind=kind, hidden=[32, 16], num_tasks=2))
    u, v = torch.randn(4, 2, 16), torch.randn(4, 10, 16)
    want = arch(u, v)
    arch_bf16 = OverArch(16, OverArchConfig(kind=kind, hidden=[32, 16], num_tasks=2))
    arch_bf16.load_state_dict(arch.state_dict())
    arch_bf16.to(torch.bfloat16)
    got = arch_bf16(u.bfloat16(), v.bfloat16())
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want, atol=0.05 * want.abs().max().item(), rtol=0.05)


@pytest.mark.parametrize("kind", KINDS)
def test_export_with_dynamic_batch(kind: str) -> None:
    torch.manual_seed(0)
    arch = OverArch(8, OverArchConfig(kind=kind, hidden=[16], num_tasks=3)).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    exported = torch.export.export(
        arch, (torch.randn(4, 3, 8), torch.randn(4, 6, 8)), dynamic_shapes=({0: batch}, {0: batch})
    )
    u, v = torch.randn(7, 3, 8), torch.randn(7, 6, 8)
    torch.testing.assert_close(exported.module()(u, v), arch(u, v))


def test_pair_mlp_is_an_mlp_over_the_concatenation() -> None:
    torch.manual_seed(0)
    arch = OverArch(6, OverArchConfig(kind="mlp", hidden=[8, 4], num_tasks=2))
    pair = arch.scorer.mlp
    u, v = torch.randn(3, 2, 6), torch.randn(3, 5, 6)
    uu, vv = u.unsqueeze(1).expand(3, 5, 2, 6), v.unsqueeze(2).expand(3, 5, 2, 6)
    weight = torch.cat([pair.user.weight, pair.item.weight, pair.cross.weight], dim=1)  # [H, 3D]
    first = torch.relu(nn.functional.linear(torch.cat([uu, vv, uu * vv], dim=-1), weight, pair.user.bias))
    torch.testing.assert_close(pair(u, v), pair.rest(first))
