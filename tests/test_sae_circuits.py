"""Unit tests of companion.interpretability.sae_circuits: exact properties of the mechanism."""

import pytest
import torch

from companion.interpretability import sae_circuits as sc
from companion.nn.transformer import TinyLM, TransformerConfig


def tiny_model() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(TransformerConfig(vocab_size=12, d_model=16, n_layers=2, n_heads=4, pos="learned", max_len=16))


def test_negatives_are_length_matched_and_share_the_second_half():
    g = torch.Generator().manual_seed(0)
    pos = sc.induction_batch(5, 10, 12, g)
    assert torch.equal(pos[:, :5], pos[:, 5:])
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    neg = sc.induction_batch(5, 10, 12, g1, negative=True)
    assert neg.shape == pos.shape
    assert torch.equal(neg[:, 5:], sc.induction_batch(5, 10, 12, g2)[:, 5:])


def test_head_results_sum_to_the_attention_output():
    """sum over heads of z_h W_O^h equals the attention block's out_proj output (mean-pooled)."""
    model = tiny_model()
    seq = torch.randint(0, 12, (3, 8))
    r = sc.head_results(model, seq)  # (3, 8 heads, 16)
    outs = []
    hooks = [b.attn.register_forward_hook(lambda m, a, o: outs.append(o.mean(1))) for b in model.blocks]
    with torch.no_grad():
        model(seq)
    for h in hooks:
        h.remove()
    for layer in range(2):
        torch.testing.assert_close(r[:, 4 * layer:4 * layer + 4].sum(1), outs[layer], atol=1e-5, rtol=1e-5)


def test_replacing_a_head_by_itself_changes_nothing_and_ablation_is_per_head():
    model = tiny_model()
    seq = torch.randint(0, 12, (4, 8))
    with torch.no_grad(), sc.HeadHook(model) as hook:
        clean = model(seq[:, :-1])
    z = hook.z[1][:, :, 2]  # (B, N, Dh) of layer 1 head 2
    same = sc.correct_logit(model, seq, slice(0, 7), replace={(1, 2): z})
    torch.testing.assert_close(same, sc.correct_logit(model, seq, slice(0, 7)))
    eff = sc.ablation_effects(model, seq, slice(0, 7))
    assert eff.shape == (2, 4) and torch.isfinite(eff).all()
    assert clean.shape == (4, 7, 12)


def test_unit_norm_rows_survive_training():
    x = torch.randn(6, 5, 16)
    sae = sc.train_sae(x, n_features=20, epochs=30)
    # training ends on the unit sphere (the last optimiser step is renormalised)
    torch.testing.assert_close(sae.encoder.weight.norm(dim=-1), torch.ones(20), atol=1e-5, rtol=0)
    torch.testing.assert_close(sae.decoder.weight.norm(dim=-1), torch.ones(16), atol=1e-5, rtol=0)
    # the backward hook removes the gradient component along each row
    sae.zero_grad()
    sc.sae_loss(sae, x, 0.02).backward()
    along = (sae.encoder.weight.grad * sae.encoder.weight.detach()).sum(-1)
    torch.testing.assert_close(along, torch.zeros(20), atol=1e-6, rtol=0)


def test_node_scores_count_codes_unique_to_positives():
    pos = torch.tensor([[0, 1], [2, 1], [3, 1]])
    neg = torch.tensor([[0, 1], [0, 5], [0, 1]])
    assert sc.node_scores(pos, neg).tolist() == [2.0, 0.0]
    assert sc.node_scores(pos, neg, normalise=True).tolist() == pytest.approx([2 / 3, 0.0])


def test_roc_auc_and_f1():
    assert sc.roc_auc([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0
    assert sc.roc_auc([0, 1, 2, 3], [1, 1, 0, 0]) == 0.0
    assert sc.roc_auc([1, 1, 1, 1], [1, 0, 1, 0]) == 0.5
    assert sc.best_f1([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0


def test_argument_errors_name_the_argument():
    with pytest.raises(ValueError, match="length"):
        sc.induction_batch(2, 7, 10)
    with pytest.raises(ValueError, match="x must be"):
        sc.train_sae(torch.randn(4, 16))
    with pytest.raises(ValueError, match="labels"):
        sc.roc_auc([1, 2], [1, 1])
    with pytest.raises(ValueError, match="pos_codes"):
        sc.node_scores(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
