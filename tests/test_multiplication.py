"""Unit tests of companion.interpretability.multiplication: the data and the running sum are exact."""

import pytest
import torch

from companion.interpretability import multiplication as mul
from companion.nn.transformer import TinyLM, TransformerConfig


def test_batch_encodes_the_product_least_significant_first():
    seq, c_hat = mul.multiplication_batch(64, torch.Generator().manual_seed(0))
    assert seq.shape == (64, 18) and c_hat.shape == (64, 8)
    w4, w8 = 10 ** torch.arange(4), 10 ** torch.arange(8)
    a, b, c = (seq[:, :4] * w4).sum(1), (seq[:, 5:9] * w4).sum(1), (seq[:, 10:] * w8).sum(1)
    assert torch.equal(a * b, c)
    assert (seq[:, 4] == mul.TIMES).all() and (seq[:, 9] == mul.EQUALS).all()


def test_running_sum_gives_the_digits_and_the_carry_chain():
    seq, c_hat = mul.multiplication_batch(64, torch.Generator().manual_seed(1))
    assert torch.equal(c_hat % 10, seq[:, 10:])
    assert torch.equal(mul.running_sum(torch.tensor([[5, 6, 3, 2]]), torch.tensor([[7, 4, 3, 4]]))[0, 0],
                       torch.tensor(35))  # 5 * 7
    # the last running sum is below 10 (4x4 digits give at most 8 digits)
    assert (c_hat[:, -1] < 10).all()


def test_icot_sequence_holds_the_partial_products():
    seq, _ = mul.multiplication_batch(8, torch.Generator().manual_seed(2))
    cot = mul.icot_sequence(seq)
    assert cot.shape == (8, 18 + 4 * 6)
    a = (seq[:, :4] * 10 ** torch.arange(4)).sum(1)
    p0 = (cot[:, 10:15] * 10 ** torch.arange(5)).sum(1)
    assert torch.equal(p0, a * seq[:, 5])
    assert torch.equal(cot[:, -8:], seq[:, -8:])
    assert mul.icot_keep(0, 100, 24) == 24 and mul.icot_keep(99, 100, 24) == 0


def test_aux_probe_and_digit_metrics_run():
    torch.manual_seed(0)
    model = TinyLM(TransformerConfig(vocab_size=mul.VOCAB, d_model=16, n_layers=2, n_heads=4, pos="learned", max_len=64))
    probe = mul.AuxHeadProbe(model, layer=1, heads=(0, 2))
    seq, c_hat = mul.multiplication_batch(5)
    logits, aux = probe.loss(model, seq, c_hat)
    assert logits.shape == (5, 17, mul.VOCAB) and aux.ndim == 0
    aux.backward()
    assert probe.probes[0].weight.grad is not None
    assert mul.digit_losses(logits, seq).shape == (8,)
    assert mul.digit_accuracy(model, seq).shape == (8,)


def test_ridge_probe_recovers_a_linear_target():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g)
    y = x @ torch.arange(1.0, 7.0) + 3
    assert mul.ridge_probe_r2(x[:300], y[:300], x[300:], y[300:], ridge=1e-6) > 0.999


def test_argument_errors_name_the_argument():
    with pytest.raises(ValueError, match="a and b"):
        mul.running_sum(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="seq must be"):
        mul.icot_sequence(torch.zeros(2, 5, dtype=torch.long))
