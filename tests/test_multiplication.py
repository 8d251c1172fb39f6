"""Unit tests of companion.interpretability.multiplication: the data, the running sum, the official
ICoT format and its removal schedule are exact; the aux probe reads the heads before W_O."""

import pytest
import torch

from companion.interpretability import multiplication as mul
from companion.nn.transformer import TinyLM, TransformerConfig

# the first line of the official 4x4 validation file (Deng et al. 2024, data/4_by_4_mult/valid.txt)
OFFICIAL = ("5 6 3 2 * 7 4 3 4||5 5 5 6 1 + 0 0 6 4 9 0 ( 5 5 1 1 1 1 ) + 0 0 5 9 0 7 0 ( 5 5 6 0 2 8 0 ) "
            "+ 0 0 0 0 6 4 9 0 #### 5 5 6 0 8 2 0 1")
NAMES = {"*": mul.TIMES, "+": mul.PLUS, "(": mul.LPAR, ")": mul.RPAR}


def _official_tokens():
    src, rest = OFFICIAL.split("||")
    cot, ans = rest.split(" #### ")
    enc = lambda s: torch.tensor([NAMES[t] if t in NAMES else int(t) for t in s.split()])  # noqa: E731
    return enc(src), enc(cot), enc(ans)


def _model(d=16):
    torch.manual_seed(0)
    return TinyLM(TransformerConfig(vocab_size=mul.VOCAB, d_model=d, n_layers=2, n_heads=4, pos="learned", max_len=80))


def test_batch_encodes_the_product_least_significant_first():
    seq, c_hat = mul.multiplication_batch(64, torch.Generator().manual_seed(0))
    assert seq.shape == (64, 18) and c_hat.shape == (64, 8)
    a, b, c = mul.from_digits(seq[:, :4]), mul.from_digits(seq[:, 5:9]), mul.from_digits(seq[:, 10:])
    assert torch.equal(a * b, c)
    assert (seq[:, 4] == mul.TIMES).all() and (seq[:, 9] == mul.EQUALS).all()
    assert ((a >= 1000) & (a <= 9999)).all()


def test_running_sum_gives_the_digits_and_the_carry_chain():
    seq, c_hat = mul.multiplication_batch(64, torch.Generator().manual_seed(1))
    assert torch.equal(c_hat % 10, seq[:, 10:])
    a, b = seq[:, :4], seq[:, 5:9]
    for k in range(8):  # the recursion, written out against the definition
        s_k = sum(a[:, i] * b[:, k - i] for i in range(4) if 0 <= k - i < 4)
        prev = c_hat[:, k - 1] // 10 if k else 0
        assert torch.equal(c_hat[:, k], s_k + prev)
    assert int(mul.running_sum(torch.tensor([[5, 6, 3, 2]]), torch.tensor([[7, 4, 3, 4]]))[0, 0]) == 35
    assert (c_hat[:, -1] < 10).all()


def test_icot_cot_matches_the_official_data_file():
    src, cot, ans = _official_tokens()
    seq = torch.cat([src, torch.tensor([mul.EQUALS]), ans])[None]
    assert torch.equal(mul.icot_cot(seq)[0], cot)
    assert cot.numel() == mul.N_COT
    full = mul.icot_sequence(seq, 0)[0]
    assert torch.equal(full, torch.cat([src, cot, torch.tensor([mul.EQUALS]), ans]))


def test_icot_removal_drops_tokens_from_the_left_and_ends_at_the_plain_sequence():
    seq, _ = mul.multiplication_batch(6, torch.Generator().manual_seed(2))
    cot = mul.icot_cot(seq)
    for k in (0, 1, 17, 45):
        rows = mul.icot_sequence(seq, k)
        for i, r in enumerate(rows):
            assert torch.equal(r, torch.cat([seq[i, :9], cot[i, k:], seq[i, 9:]]))
    assert torch.equal(torch.stack(mul.icot_sequence(seq, mul.N_COT)), seq)
    per_row = mul.icot_sequence(seq, torch.tensor([0, 46, 3, 3, 10, 46]))
    assert [len(r) for r in per_row] == [18 + 46, 18, 18 + 43, 18 + 43, 18 + 36, 18]


def test_icot_schedule_and_offsets():
    assert [mul.icot_removed(s, 10) for s in (0, 9, 10, 25, 459, 460, 10_000)] == [0, 0, 1, 2, 45, 46, 46]
    o = mul.removal_offsets(20_000, 4.0, torch.Generator().manual_seed(0))
    # P(0) = 1 - e^-4 = 0.982 (official compute_lambda_distribution)
    assert abs(float((o == 0).float().mean()) - (1 - torch.exp(torch.tensor(-4.0)).item())) < 0.005
    assert (mul.removal_offsets(5, float("inf")) == 0).all()
    x, y = mul.icot_batch(mul.multiplication_batch(8)[0], 46, lam=float("inf"))
    assert x.shape == (8, 18) and torch.equal(y[:, :8], torch.full((8, 8), mul.IGNORE))
    assert torch.equal(y[:, 8:], x[:, 9:])  # labels: '=' and the answer digits


def test_pad_rows_masks_prompt_and_padding():
    seq, _ = mul.multiplication_batch(2, torch.Generator().manual_seed(3))
    x, y = mul.pad_rows(mul.icot_sequence(seq, torch.tensor([0, 46])))
    assert x.shape == (2, 64) and y.shape == (2, 63)
    assert (x[1, 18:] == mul.PAD).all() and (y[1, 17:] == mul.IGNORE).all()
    assert torch.equal(y[0, 8:], x[0, 9:])


def test_aux_probe_reads_heads_before_w_o():
    model = _model()
    probe = mul.AuxHeadProbe(model, layer=1, heads=(0, 2))
    seq, c_hat = mul.multiplication_batch(5)
    logits, aux = probe.loss(model, seq, c_hat)
    assert logits.shape == (5, 17, mul.VOCAB) and aux.ndim == 0
    aux.backward()
    assert probe.probes[0].weight.grad is not None
    # the per-head outputs, concatenated and multiplied by W_O, are the attention block's output
    outs = []
    hk = model.blocks[1].attn.register_forward_hook(lambda m, a, o: outs.append(o))
    _, z = probe.head_outputs(model, seq)
    hk.remove()
    assert torch.allclose(z.flatten(2) @ model.blocks[1].attn.out_proj.weight.T, outs[0], atol=1e-6)
    # the loss is the mean over heads and the 8 c_k token positions of (w_h . z - c_hat / 100)^2
    by_hand = torch.stack([(z[:, 10:18, h] @ p.weight[0] - c_hat / 100.0) ** 2
                           for p, h in zip(probe.probes, (0, 2))]).mean()
    assert torch.allclose(by_hand, probe.loss(model, seq, c_hat)[1])


def test_digit_metrics_and_residual_sites():
    model = _model()
    seq, c_hat = mul.multiplication_batch(40, torch.Generator().manual_seed(4))
    logits = model(seq[:, :-1])
    assert mul.digit_losses(logits, seq).shape == (8,)
    assert mul.digit_accuracy(model, seq).shape == (8,)
    sites = mul.residual_sites(model, seq)
    assert list(sites) == ["L0 resid_mid", "L0 resid_post", "L1 resid_mid", "L1 resid_post"]
    assert all(v.shape == (40, 8, 16) for v in sites.values())
    table = mul.probe_table(model, seq, c_hat, 30)
    assert set(table) == set(sites) and all(len(v) == 8 for v in table.values())


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
    with pytest.raises(ValueError, match="removed must be"):
        mul.icot_sequence(torch.zeros(2, 18, dtype=torch.long), 47)
    with pytest.raises(ValueError, match="scheduled must be"):
        mul.icot_batch(torch.zeros(2, 18, dtype=torch.long), -1)
    with pytest.raises(ValueError, match="n_train must be"):
        mul.probe_table(_model(), *mul.multiplication_batch(4), 4)
