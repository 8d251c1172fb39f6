"""Exact tests of differential information on tabular policies (companion.alignment.did)."""

from __future__ import annotations

import pytest
import torch

from companion.alignment import did as D


def setup(seed: int = 0, n: int = 12, beta: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    lref = torch.log_softmax(torch.randn(n, generator=g, dtype=torch.float64), -1)
    lstar = D.bayes_update(lref, D.random_did(n, 1.0, g))
    return lref, lstar, D.rejected_policy(lref, lstar, beta), beta


def test_did_is_the_bayes_evidence():
    lref, lstar, _, _ = setup()
    q = D.did(lstar, lref)
    torch.testing.assert_close(q.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(D.bayes_update(lref, q), lstar)


def test_power_law_condition_holds_for_the_closed_form_rejected_policy():
    lref, lstar, ll, beta = setup()
    gap = D.did(lref, ll) - beta * D.did(lstar, lref)  # log q_{ref/l} - beta log q_{*/ref}: a constant
    assert float(gap.max() - gap.min()) < 1e-12


@pytest.mark.parametrize("beta", [0.3, 1.0])
def test_target_is_a_stationary_point_of_the_population_dpo_loss_only_with_matching_beta(beta):
    lref, lstar, ll, _ = setup(beta=beta)
    wins = D.expected_wins(lref, ll)
    assert abs(float(wins.sum()) - 1.0) < 1e-12
    logits = lstar.clone().requires_grad_(True)
    D.preference_loss(logits, lref, wins, "dpo", beta).backward()
    assert float(logits.grad.abs().max()) < 1e-12
    for kind, b in (("dpo", 2 * beta), ("no_reference", beta)):
        logits = lstar.clone().requires_grad_(True)
        D.preference_loss(logits, lref, wins, kind, b).backward()
        assert float(logits.grad.abs().max()) > 1e-4


def test_sampled_wins_converge_to_expected_wins():
    lref, _, ll, _ = setup(n=4)
    w = D.sample_wins(lref, ll, 200_000, torch.Generator().manual_seed(1))
    assert float(w.sum()) == 200_000
    torch.testing.assert_close(w / w.sum(), D.expected_wins(lref, ll), atol=5e-3, rtol=0)


def test_centered_r2_ignores_constants_and_penalises_scale():
    t = torch.tensor([0.0, 1.0, 3.0, -2.0], dtype=torch.float64)
    assert D.centered_r2(t + 7.0, t) == pytest.approx(1.0)
    assert D.centered_r2(0.5 * t, t) == pytest.approx(0.75)


def test_zipf_and_entropy():
    lp = D.zipf_logp(5, 0.0)
    assert float(D.entropy(lp)) == pytest.approx(torch.log(torch.tensor(5.0)).item())


def test_argument_errors_name_the_argument():
    lref = D.zipf_logp(4)
    with pytest.raises(ValueError, match="logp_ref"):
        D.did(lref, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="beta"):
        D.rejected_policy(lref, lref, 0.0)
    with pytest.raises(ValueError, match="kind"):
        D.reward(lref, lref, "simpo", 0.5)
    with pytest.raises(ValueError, match="wins"):
        D.preference_loss(lref, lref, torch.zeros(3, 3))


def test_newton_solution_is_the_target_and_the_reference_free_optimum_is_the_did():
    lref, lstar, ll, beta = setup(n=16)
    wins = D.expected_wins(lref, ll)
    d = D.solve(lref, wins, "dpo", beta) - lstar
    assert float((d - d.mean()).abs().max()) < 1e-10
    torch.testing.assert_close(D.solve(lref, wins, "no_reference", beta).exp(), D.did(lstar, lref).exp())
