"""The 16-bit-word dropout: its drop rate, its expectation, its gradient, and the tower's attention path."""
import pytest
import torch

import silverrec.models.sequence_tower as sequence_tower
from silverrec.models.dropout import Dropout, dropout, keep_mask, keep_scale
from silverrec.models.sequence_tower import CausalBlock


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 0.9])
def test_drop_rate_and_expectation_match_nn_dropout(p):
    torch.manual_seed(0)
    n = 2_000_000
    y = dropout(torch.ones(n), p, training=True)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 5 * (p * (1 - p) / n) ** 0.5 + 2 ** -17
    kept = y[y != 0]
    assert torch.all(kept == kept[0])  # one scale
    p_eff = round(p * 65536) / 65536
    assert kept[0].item() == pytest.approx(1 / (1 - p_eff), rel=1e-6)
    assert y.mean().item() == pytest.approx(1.0, abs=6 * (p / (1 - p) / n) ** 0.5)


def test_keep_scale_is_keep_mask_times_the_scale():
    # same random words: the float comparison (sign trick) and the int16 comparison agree at every element,
    # including the values next to the threshold
    for p in (0.1, 0.2, 0.3333, 1 / 65536):
        torch.manual_seed(1)
        mask = keep_mask(torch.Size([300, 700]), p, torch.device("cpu"))
        torch.manual_seed(1)
        scale = keep_scale(torch.Size([300, 700]), p, torch.device("cpu"), torch.float32)
        assert torch.equal(scale > 0, mask)


def test_mask_bits_are_independent_of_position():
    # every 16-bit slice of the 64-bit words is uniform: the drop rate is the same in all four lanes
    torch.manual_seed(2)
    m = keep_mask(torch.Size([4_000_000]), 0.5, torch.device("cpu")).view(-1, 4).float().mean(0)
    assert torch.all((m - 0.5).abs() < 0.003), m


def test_gradient_is_the_mask_and_eval_is_identity():
    torch.manual_seed(3)
    x = torch.randn(64, 33, requires_grad=True)
    y = dropout(x, 0.3, training=True)
    y.sum().backward()
    scale = 1 / (1 - round(0.3 * 65536) / 65536)
    expected = torch.where(y != 0, torch.full_like(y, scale), torch.zeros_like(y))
    assert torch.allclose(x.grad, expected)
    layer = Dropout(0.3).eval()
    assert layer(x) is x
    assert dropout(x, 0.0, training=True) is x
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)


def test_training_attention_path_equals_sdpa_without_dropout(monkeypatch):
    # the training path computes attention by hand (to drop weights with the fast mask); with the
    # masks made identities it must equal the SDPA path of eval and export
    torch.manual_seed(4)
    block = CausalBlock(16, num_heads=2, dropout=0.1, ffn_dim=16)
    block.drop.p = block.ffn[2].p = 0.0
    monkeypatch.setattr(sequence_tower, "dropout", lambda w, p, training: w)
    x = torch.randn(3, 7, 16)
    valid = torch.tensor([[False, False, True, True, True, True, True]] * 2 + [[True] * 7])
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    mask = ((causal & valid.unsqueeze(1)) | torch.eye(7, dtype=torch.bool)).unsqueeze(1)
    trained = block.train()(x, mask)
    served = block.eval()(x, mask)
    assert torch.allclose(trained, served, atol=1e-5)
