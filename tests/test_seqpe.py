"""Tests for companion.attention.seqpe: digits, the encoder, the contrastive and transfer losses."""

import math

import pytest
import torch

from companion.attention import seqpe as sp
from companion.nn import TinyLM, TransformerConfig


def test_position_digits_left_padded():
    digits, pad = sp.position_digits(torch.tensor([0, 7, 42, 123]), max_digits=3)
    assert digits.tolist() == [[0, 0, 0], [0, 0, 7], [0, 4, 2], [1, 2, 3]]
    assert pad.tolist() == [[True, True, False], [True, True, False], [True, False, False], [False, False, False]]
    with pytest.raises(ValueError, match="base\\*\\*max_digits"):
        sp.position_digits(torch.tensor([1000]), max_digits=3)
    with pytest.raises(ValueError, match="positions"):
        sp.position_digits(torch.tensor([1.0]), max_digits=3)


def test_encoder_output_depends_only_on_position():
    torch.manual_seed(0)
    pe = sp.SeqPE(dim=8, max_digits=3, d_model=16, n_layers=1, n_heads=2).eval()
    a = pe(torch.tensor([[5, 17, 5], [300, 17, 999]]))  # (2, 3, 8)
    assert a.shape == (2, 3, 8)
    torch.testing.assert_close(a[0, 0], a[0, 2])  # same position, same vector, wherever it sits
    torch.testing.assert_close(a[0, 1], a[1, 1])
    torch.testing.assert_close(a[1, 0], pe.encode(torch.tensor([300]))[0])  # unique-position cache is exact
    assert not torch.allclose(a[0, 0], a[0, 1])


def test_padding_slots_are_masked():
    """The embedding of 7 must not depend on what sits in the (masked) padding slots."""
    torch.manual_seed(0)
    pe = sp.SeqPE(dim=8, max_digits=3, d_model=16, n_layers=2, n_heads=2).eval()
    ref = pe.encode(torch.tensor([7]))
    digits, pad = sp.position_digits(torch.tensor([7]), 3)
    tokens = torch.cat([digits.masked_fill(pad, 9), torch.full((1, 1), pe.cls_id)], dim=1)
    keep = torch.cat([~pad, torch.ones(1, 1, dtype=torch.bool)], dim=1)
    h = pe.encoder(tokens, mask=keep[:, None, :].expand(-1, 4, -1) & torch.ones(4, 4, dtype=torch.bool).tril())
    torch.testing.assert_close(pe.out(h[:, -1]) / pe.temperature, ref)


def test_contrastive_labels_are_the_nearest_candidate():
    g = torch.Generator().manual_seed(0)
    piv, cand, labels = sp.contrastive_candidates(64, 12, 512, near=8, generator=g)
    assert cand.shape == (64, 12) and int(cand.min()) >= 0 and int(cand.max()) < 512
    dist = (cand - piv[:, None]).abs()
    assert torch.equal(dist.gather(1, labels[:, None])[:, 0], dist.min(1).values)
    near = cand[:, 8:]  # the last third: within `near` of the pivot
    assert int((near - piv[:, None]).abs().max()) <= 8


def test_contrastive_loss_exact_values():
    piv = torch.tensor([[1.0, 0.0]])
    cand = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]])
    logits = torch.tensor([2.0, 0.0, -1.0])
    want = -torch.log_softmax(logits, 0)[0]
    torch.testing.assert_close(sp.contrastive_loss(piv, cand, torch.tensor([0])), want)
    # multi-head: each head is its own classification on its slice of the embedding
    piv2, cand2 = torch.cat([piv, piv], 1), torch.cat([cand, cand.flip(1)], 2)
    want2 = (want - torch.log_softmax(torch.tensor([-1.0, 0.0, 2.0]), 0)[0]) / 2
    torch.testing.assert_close(sp.contrastive_loss(piv2, cand2, torch.tensor([0]), n_heads=2), want2)
    # equal candidates: loss is log(n) whatever the label
    flat = sp.contrastive_loss(torch.ones(1, 4), torch.ones(1, 5, 4), torch.tensor([3]))
    assert math.isclose(float(flat), math.log(5), rel_tol=1e-6)


def test_transfer_loss_zero_iff_same_structure_and_teacher_detached():
    torch.manual_seed(0)
    t = torch.randn(6, 8, requires_grad=True)
    q, _ = torch.linalg.qr(torch.randn(8, 8))
    rotated = (t.detach() @ q).requires_grad_()  # an orthogonal map keeps every dot product
    assert sp.transfer_loss(t, rotated).item() < 1e-6
    s = torch.randn(6, 8, requires_grad=True)
    loss = sp.transfer_loss(t, s, n_heads=2)
    assert loss.item() > 0
    loss.backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0
    # symmetric KL: equals KL(S||T) + KL(T||S) computed by hand
    lt, ls = torch.log_softmax(t @ t.T, -1), torch.log_softmax(s @ s.T, -1)
    want = ((ls.exp() * (ls - lt)).sum(-1) + (lt.exp() * (lt - ls)).sum(-1)).mean() / 6  # mean over n² elements
    torch.testing.assert_close(sp.transfer_loss(t, s), want)
    # the official reduction: F.kl_div(input, target, log_target=True) with reduction="mean"
    official = (torch.nn.functional.kl_div(lt, ls, log_target=True, reduction="mean")
                + torch.nn.functional.kl_div(ls, lt, log_target=True, reduction="mean"))
    torch.testing.assert_close(sp.transfer_loss(t, s), official)


def test_transfer_windows_are_shifted_copies():
    g = torch.Generator().manual_seed(1)
    idx, shifted = sp.transfer_windows(16, 64, 512, generator=g)
    assert idx.numel() == 16 and len(set(idx.tolist())) == 16 and int(idx.max()) < 64
    shift = shifted - idx
    assert len(set(shift.tolist())) == 1 and 64 <= int(shift[0]) <= 448
    with pytest.raises(ValueError, match="n_indices"):
        sp.transfer_windows(65, 64, 512)


def test_seqpe_lm_bias_and_shift_invariance_of_contents():
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=11, d_model=16, n_layers=1, n_heads=2, pos="none")
    model = sp.SeqPELM(cfg, pe_dim=8, max_digits=3, d_model=8, n_layers=1, n_heads=2).eval()
    x = torch.randint(0, 11, (2, 5))
    bias = model.position_bias(torch.arange(5))
    assert bias.shape == (1, 2, 5, 5)
    # the bias between two positions depends only on those positions
    torch.testing.assert_close(model.position_bias(torch.tensor([3, 9]))[0, :, 0, 1],
                               model.position_bias(torch.tensor([1, 3, 4, 9]))[0, :, 1, 3])
    # with the bias zeroed the model is a position-free TinyLM with the same weights
    plain = TinyLM(cfg)
    plain.load_state_dict(model.lm.state_dict())
    with torch.no_grad():
        model.pe_qk.weight.zero_()
    torch.testing.assert_close(model(x), plain(x))
    torch.testing.assert_close(model(x, position_ids=torch.arange(100, 105)), plain(x))
    with pytest.raises(ValueError, match="cfg.pos"):
        sp.SeqPELM(TransformerConfig(vocab_size=11, d_model=16, pos="rope"))


def test_objective_and_warmup():
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=11, d_model=16, n_layers=1, n_heads=2, pos="none")
    model = sp.SeqPELM(cfg, pe_dim=8, max_digits=3, d_model=8, n_layers=1, n_heads=2)
    obj = sp.SeqPEObjective(train_len=8, max_position=100, n_pivots=4, n_candidates=6, n_transfer=4, n_heads=2,
                            warmup=10)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 11, (2, 8)), torch.randint(0, 11, (2, 8))
    loss, parts = obj(model, x, y, torch.arange(8), step=4, generator=g)
    assert set(parts) == {"task", "ct", "tr"}
    assert math.isclose(loss.item(), parts["task"] + 0.05 * parts["ct"] + 0.05 * parts["tr"], rel_tol=1e-5)
    assert sp.aux_weight(0, 0.1, 10) == pytest.approx(0.01) and sp.aux_weight(50, 0.1, 10) == 0.1
    pos = sp.shifted_positions(8, 100, rate=1.0, generator=g)
    assert pos.shape == (8,) and torch.equal(pos - pos[0], torch.arange(8)) and int(pos[-1]) < 100
    assert torch.equal(sp.shifted_positions(8, 100, rate=0.0, generator=g), torch.arange(8))


def test_spearman_and_distance_correlation():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert sp.spearman(x, x ** 3) == pytest.approx(1.0)
    assert sp.spearman(x, -x) == pytest.approx(-1.0)
    assert sp.spearman(torch.tensor([1.0, 1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])) == pytest.approx(
        0.9486833, abs=1e-6)  # ties get average ranks (scipy.stats.spearmanr value)
    # an embedding that is the position itself tracks distance perfectly
    assert sp.distance_correlation(lambda p: p[:, None].float(), 512) == pytest.approx(1.0)


def _one_edits(p: int, max_position: int) -> set[int]:
    s = str(p)
    out = {int(s[:i] + str(d) + s[i:]) for i in range(len(s) + 1) for d in range(10)}
    out |= {int(s[:i] + s[i + 1:]) for i in range(len(s)) if len(s) > 1}
    out |= {int(s[:i] + s[i + 1] + s[i] + s[i + 2:]) for i in range(len(s) - 1)}
    out = {v for v in out if v < max_position}
    return out or {int(s[1:] or "0")}


def test_digit_edit_candidates_are_one_edit_away():
    g = torch.Generator().manual_seed(3)
    piv, cand, _ = sp.contrastive_candidates(32, 9, 512, generator=g)  # thirds: random, edits, near
    for p, edits in zip(piv.tolist(), cand[:, 3:6].tolist()):
        allowed = _one_edits(p, 512)
        assert all(c in allowed for c in edits), (p, edits)  # never wrapped modulo max_position
    assert int(cand[:, 3:6].max()) < 512
    with pytest.raises(ValueError, match="n_candidates"):
        sp.contrastive_candidates(4, 2, 512)


def test_encoder_is_causal_by_default():
    torch.manual_seed(0)
    causal, bidir = sp.SeqPE(8, causal=True).eval(), sp.SeqPE(8, causal=False).eval()
    assert causal.causal and not bidir.causal
    bidir.load_state_dict(causal.state_dict())
    p = torch.tensor([5, 123, 407])
    assert not torch.allclose(causal(p), bidir(p))  # the direction changes what [CLS] reads from the digits


def test_copy_offset_batch_and_accuracy():
    x, y = sp.copy_offset_batch(4, 30, offset=8, vocab=32, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 30)
    assert bool((y[:, :7] == sp.IGNORE).all()) and bool((y[:, 7:] != sp.IGNORE).all())
    assert torch.equal(y[:, 7:], x[:, :-7])  # target at t is s_{t+1} = s_{t-7} = x_{t-7}

    class Oracle(torch.nn.Module):  # predicts x_{t-7}: the rule itself
        def forward(self, idx):
            out = torch.zeros(*idx.shape, 32)
            out[:, 7:].scatter_(-1, idx[:, :-7, None], 1.0)
            return out

    assert sp.copy_accuracy(Oracle(), x, y) == 1.0 and sp.copy_accuracy(Oracle(), x, y, start=20) == 1.0
    with pytest.raises(ValueError, match="start"):
        sp.copy_accuracy(Oracle(), x, y, start=30)
