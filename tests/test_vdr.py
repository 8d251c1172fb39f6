import math

import pytest
import torch
import torch.nn.functional as F

from companion.embeddings import negclip as nc
from companion.embeddings import vdr


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    images, tokens, _ = nc.training_batch(n, g, batches="bag-free")
    return images, tokens


def test_bow_and_word_query():
    tokens = torch.tensor([[nc.WORD_ID[w] for w in "red circle left of blue square".split()]])
    b = vdr.bow(tokens)
    assert b.shape == (1, vdr.V) and b.sum() == 6
    assert torch.equal(b, vdr.word_query([["red", "circle", "left", "of", "blue", "square"]]))
    assert torch.equal(vdr.attribute_words(tokens), vdr.word_query([["red", "circle", "blue", "square"]]))
    with pytest.raises(ValueError, match="words"):
        vdr.word_query([["crimson"]])
    with pytest.raises(ValueError, match="tokens"):
        vdr.bow(torch.zeros(2, 3))


def test_topk_bow_mask():
    z = torch.tensor([[5.0, 1.0, 4.0, 2.0, 3.0]])
    lex = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]])
    out = vdr.topk_bow_mask(z, 2, lex)
    assert torch.equal(out, torch.tensor([[5.0, 1.0, 4.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="k must"):
        vdr.topk_bow_mask(z, 0)


def test_vocab_head_is_positive_and_matches_formula():
    torch.manual_seed(0)
    m = vdr.VDRModel("vdr")
    images, tokens = _batch()
    with torch.no_grad():
        zt, zi = m.encode_text(tokens), m.encode_image(images)
        assert zt.shape == (8, vdr.V) and zi.shape == (8, vdr.V)
        assert bool((zt > 0).all() and (zi > 0).all())
        h = m.text(tokens)
        manual = (F.elu(F.layer_norm(h, (h.shape[-1],), m.ln_text.weight, m.ln_text.bias)
                        @ m.text.embed.weight[1:].T) + 1).max(dim=1).values
        assert torch.allclose(zt, manual)
        q = m.encode_query(tokens, 4)
        nz = q > 0
        assert bool((nz | (vdr.bow(tokens) == 0)).all())  # every caption word is kept
        assert bool((nz.sum(1) <= 4 + 6).all())


def test_dense_head_normalised():
    torch.manual_seed(0)
    m = vdr.VDRModel("dense")
    images, tokens = _batch()
    with torch.no_grad():
        assert torch.allclose(m.encode_text(tokens).norm(dim=1), torch.ones(8))
        assert torch.allclose(m.encode_image(images).norm(dim=1), torch.ones(8))
        assert m.image_vocab(images).shape == (8, vdr.V)
    with pytest.raises(ValueError, match="head"):
        vdr.VDRModel("sparse")


def test_clip_loss_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[1.0, 1.0], [0.5, 1.0]])
    s = q @ p.T
    l_qp = -0.5 * sum(math.log(math.exp(s[i, i]) / sum(math.exp(s[i, j]) for j in range(2))) for i in range(2))
    l_pq = -0.5 * sum(math.log(math.exp(s[i, i]) / sum(math.exp(s[j, i]) for j in range(2))) for i in range(2))
    assert abs(float(vdr.clip_loss(q, p, 1.0)) - 0.5 * (l_qp + l_pq)) < 1e-6
    lex = (q > 0).float()
    want = 0.5 * (vdr.clip_loss(vdr.topk_bow_mask(q, 1, lex), p, 1.0) + vdr.clip_loss(lex, p, 1.0))
    assert torch.allclose(vdr.vdr_loss(q, p, lex, 1), want)
    with pytest.raises(ValueError, match="img and txt must both have shape"):
        vdr.clip_loss(q, p[:1], 1.0)


def test_r_at_1_and_top_words():
    s = torch.tensor([[2.0, 1.0], [1.0, 1.0]])
    assert vdr.r_at_1(s) == 0.5  # a tie with the diagonal is a miss
    z = torch.tensor([[4.0, 3.0, 1.0], [1.0, 3.0, 4.0]])
    truth = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert vdr.top_words_hit(z, truth).tolist() == [True, False]


def test_training_step_runs():
    torch.manual_seed(0)
    for head in ("vdr", "dense"):
        m = vdr.VDRModel(head)
        loss = vdr.training_loss(m, _batch())
        loss.backward()
        assert torch.isfinite(loss) and m.text.embed.weight.grad is not None
