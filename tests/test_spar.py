import math

import pytest
import torch

from companion.alignment import spar as P
from companion.nn.transformer import TinyLM, TransformerConfig


def _p(c, e):
    return P.prompts(torch.tensor([c]), torch.tensor([e]))


def test_verify_hand_cases():
    p = _p(2, 5)
    ok = torch.tensor([[0, 1, 0, 2, 3, 1, 1, 5]])
    assert P.verify(p, ok).tolist() == [True]
    assert P.verify(p, torch.tensor([[0, 1, 0, 0, 3, 1, 1, 5]])).tolist() == [False]  # three A
    assert P.verify(p, torch.tensor([[0, 1, 2, 2, 3, 1, 1, 5]])).tolist() == [False]  # one A
    assert P.verify(p, torch.tensor([[0, 1, 0, 2, 3, 1, 1, 4]])).tolist() == [False]  # wrong end
    assert P.parse(_p(3, 7))[0].tolist() == [3] and P.parse(_p(3, 7))[1].tolist() == [7]


def test_judge_noiseless_is_verifier_and_critique_points_at_violation():
    g = torch.Generator().manual_seed(0)
    p = _p(1, 4).expand(3, -1)
    r = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 4], [0, 0, 1, 1, 1, 1, 1, 4], [0, 1, 1, 1, 1, 1, 1, 3]])
    assert P.judge(p, r, 5, 0.0, g).tolist() == [1.0, 0.0, 0.0]
    pos = P.critique(p, r, g).tolist()
    assert pos[0] == -1 and pos[1] in (0, 1) and pos[2] == 7


def test_dpo_loss_hand_computation():
    lc, lr, rc, rr = torch.tensor([-2.0]), torch.tensor([-3.0]), torch.tensor([-2.5]), torch.tensor([-2.5])
    beta, ftx, L = 0.1, 0.1, 4
    margin = beta * ((-2.0 + 2.5) - (-3.0 + 2.5))  # 0.1
    want = -math.log(1 / (1 + math.exp(-margin))) - ftx * (-2.0) / L
    assert abs(P.dpo_loss(lc, lr, rc, rr, beta, ftx, L).item() - want) < 1e-6
    with pytest.raises(ValueError, match="beta"):
        P.dpo_loss(lc, lr, rc, rr, beta=0.0)


def test_refine_changes_only_edited_positions():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    m = TinyLM(TransformerConfig(vocab_size=P.VOCAB, d_model=32, n_layers=1, n_heads=2))
    p = P.random_instructions(6, g)
    r = P.sample(m, p, 8, 1.0, g)
    for b in range(6):
        t = P.refine(m, p[b:b + 1], r[b:b + 1], g)
        diff = set((t.final != t.root).flatten().nonzero().flatten().tolist())
        assert diff <= t.edited and len(t.edited) <= 3


def test_sft_data_and_errors():
    g = torch.Generator().manual_seed(0)
    p, r = P.make_sft_data(200, 8, 1.0, g)
    assert P.verify(p, r).all()
    p, r = P.make_sft_data(200, 8, 0.0, g)
    assert P.verify(p, r).float().mean() < 0.2
    with pytest.raises(ValueError, match="comply"):
        P.make_sft_data(10, 8, 1.5, g)
    with pytest.raises(ValueError, match="resp"):
        P.verify(_p(1, 1), torch.zeros(8))
    assert P.hamming(torch.tensor([[1, 2, 3]]), torch.tensor([[1, 0, 3]])).tolist() == [1]
