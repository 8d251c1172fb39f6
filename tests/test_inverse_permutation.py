"""Unit tests of the inverse-permutation module: data, Lemma 1, the bound, the hand-built solution."""

import itertools
import math
from fractions import Fraction

import pytest
import torch

from companion.nn import CausalMask
from companion.structure import inverse_permutation as ip


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- data

def test_encode_layout_and_permuted_rows():
    task = ip.InversePermutationTask(n=4, d_y=3, n_scratch=2)
    sigma = torch.tensor([[2, 0, 3, 1]])
    y = torch.arange(12.0).view(1, 4, 3)
    x = ip.encode(task, sigma, y)
    n, d = 4, 3
    assert x.shape == (1, task.length, task.feature_dim) == (1, 10, 4 + 3 + 3 + 4 + 10)
    # P rows carry e_{sigma[i]}, Y_P rows carry Y[sigma[i]], scratch rows only their type
    assert torch.equal(x[0, :n, :n], torch.eye(4)[[2, 0, 3, 1]])
    assert torch.equal(x[0, n:2 * n, n:n + d], y[0, [2, 0, 3, 1]])
    assert torch.equal(x[0, 2 * n:, :n + d], torch.zeros(2, n + d))
    types = x[0, :, n + d:n + d + 3].argmax(-1)
    assert types.tolist() == [0] * 4 + [1] * 4 + [2] * 2
    slots = x[0, :, n + d + 3:2 * n + d + 3]
    assert slots.argmax(-1).tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1] and torch.equal(slots.sum(-1), torch.ones(10))
    assert torch.equal(x[0, :, 2 * n + d + 3:], torch.eye(10))  # one-hot positions I_T
    # P Y = Y_P: the permutation matrix applied to the canonical string gives the permuted rows
    assert torch.equal(x[0, :n, :n] @ y[0], x[0, n:2 * n, n:n + d])


def test_random_permutations_are_permutations_and_transpositions_stay_near_identity():
    uni = ip.random_permutations(500, 7, generator=gen(1))
    assert torch.equal(uni.sort(-1).values, torch.arange(7).expand(500, 7))
    assert torch.equal(ip.random_permutations(3, 5, n_transpositions=0), torch.arange(5).expand(3, 5))
    one = ip.random_permutations(500, 7, n_transpositions=1, generator=gen(2))
    assert torch.equal(one.sort(-1).values, torch.arange(7).expand(500, 7))
    moved = (one != torch.arange(7)).sum(-1)
    assert set(moved.tolist()) <= {0, 2}  # one swap moves two elements or none
    assert (uni != torch.arange(7)).sum(-1).float().mean() > 5.0  # uniform: ~ n - 1 moved


def test_curriculum_ramps_then_switches_to_uniform():
    ks = [ip.curriculum_transpositions(s, 100, n=8) for s in range(100)]
    assert ks[0] == 0 and ks[59] == 12 and ks[60] is None and ks[99] is None
    assert all(a <= b for a, b in zip(ks[:60], ks[1:60]))


# ---------------------------------------------------------------------------- Lemma 1 and the bound

@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_bound_is_exact_expectation_over_all_permutations(n):
    perms = torch.tensor(list(itertools.permutations(range(n))))
    for m in range(n + 2):
        unreachable = int((~ip.reachable(perms, n_scratch=m)).sum())  # exact count over all n! * n rows
        assert Fraction(unreachable, perms.numel()) == Fraction((n - min(m, n)) * (n - min(m, n) - 1), 2 * n * n)
        assert math.isclose(ip.causal_bound(n, m), unreachable / perms.numel(), rel_tol=1e-12)
    assert ip.causal_bound(8) == 7 / 16


def test_oracle_reaches_the_bound_and_is_perfect_without_mask():
    task = ip.InversePermutationTask(n=8)
    batch = ip.make_batch(task, 20000, generator=gen(3))
    assert abs(ip.nmse(ip.oracle_prediction(task, batch), batch.y) - 7 / 16) < 0.01
    free = ip.InversePermutationTask(n=8, causal=False)
    assert ip.nmse(ip.oracle_prediction(free, batch), batch.y) == 0.0


@pytest.mark.parametrize("n_scratch", [0, 3])
def test_lemma1_causal_rows_ignore_later_rows_exactly(n_scratch):
    """Lemma 1: row t of a causal model is a function of rows <= t only (bit-exact)."""
    torch.manual_seed(0)
    task = ip.InversePermutationTask(n=5, d_y=4, n_scratch=n_scratch)
    model = ip.PermutationInverter(task, d_model=32, n_layers=3).eval()
    x = ip.make_batch(task, 4, generator=gen(4)).x
    with torch.no_grad():
        out = model(x)
        for t in range(task.length - 1):
            x2 = x.clone()
            x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:])
            assert torch.equal(model(x2)[:, :t + 1], out[:, :t + 1])
    # without the mask the same perturbation reaches every row
    free_task = ip.InversePermutationTask(n=5, d_y=4, n_scratch=n_scratch, causal=False)
    free = ip.PermutationInverter(free_task, d_model=32).eval()
    with torch.no_grad():
        x2 = x.clone()
        x2[:, -1] += 1.0
        assert not torch.allclose(free(x2)[:, 0], free(x)[:, 0])


def test_lemma1_disentangled_model_with_random_matrices():
    task = ip.InversePermutationTask(n=4, d_y=2)
    d0 = task.feature_dim
    torch.manual_seed(1)
    model = ip.DisentangledTransformer([torch.randn(d0, d0) * 0.3, torch.randn(2 * d0, 2 * d0) * 0.1], d0)
    x = ip.make_batch(task, 3, generator=gen(5)).x
    with torch.no_grad():
        h = model(x, CausalMask())
        x2 = x.clone()
        x2[:, 5:] = torch.randn_like(x2[:, 5:])
        h2 = model(x2, CausalMask())
    assert h.shape == (3, task.length, 4 * d0)
    assert torch.equal(h[:, :5], h2[:, :5])


def test_unreachable_rows_of_a_causal_model_do_not_depend_on_their_target():
    """The bound's argument: resampling Y_j leaves the prediction at an unreachable row unchanged."""
    torch.manual_seed(2)
    task = ip.InversePermutationTask(n=6, d_y=3)
    model = ip.PermutationInverter(task, d_model=32).eval()
    sigma = torch.tensor([[5, 4, 3, 2, 1, 0]])  # reversal: Y_0 sits in the last Y_P row
    y = torch.randn(1, 6, 3)
    assert not ip.reachable(sigma)[0, 0]
    y2 = y.clone()
    y2[0, 0] = torch.randn(3) * 5
    with torch.no_grad():
        p1 = model.predict(ip.encode(task, sigma, y))
        p2 = model.predict(ip.encode(task, sigma, y2))
    assert torch.equal(p1[0, 0], p2[0, 0])


# ---------------------------------------------------------------------------- hand-built solution

@pytest.mark.parametrize("n,m,causal", [(5, 0, False), (5, 5, True), (8, 0, False), (8, 8, True), (3, 3, True)])
def test_handbuilt_solution_inverts_the_permutation(n, m, causal):
    task = ip.InversePermutationTask(n=n, d_y=4, n_scratch=m, causal=causal)
    batch = ip.make_batch(task, 256, generator=gen(6))
    with torch.no_grad():
        pred = ip.handbuilt_readout(task, ip.handbuilt_solution(task)(batch.x, task.mask))
    assert ip.nmse(pred, batch.y) < 1e-8


def test_handbuilt_solution_under_the_causal_mask_stays_above_the_bound():
    task = ip.InversePermutationTask(n=8, d_y=4)
    batch = ip.make_batch(task, 2048, generator=gen(7))
    with torch.no_grad():
        pred = ip.handbuilt_readout(task, ip.handbuilt_solution(task)(batch.x, task.mask))
    seen = ip.reachable(batch.sigma)
    assert ip.nmse(pred, batch.y, seen) < 1e-8  # what it can see, it gets right
    assert ip.nmse(pred, batch.y) >= ip.causal_bound(8) - 0.02


# ---------------------------------------------------------------------------- model and training

def test_training_with_two_readouts_and_warm_start():
    task = ip.InversePermutationTask(n=4, d_y=2, n_scratch=4)
    model, hist = ip.train_inverter(task, steps=6, readouts={"plain": 0, "scratch": 4}, batch=8, d_model=16,
                                    eval_every=3, progress=False)
    assert hist.eval_steps == [0, 3, 6]  # evaluated before training, too
    assert set(hist.evals[-1]) == {f"{r}/{k}" for r in ("plain", "scratch")
                                   for k in ("nmse", "nmse_reachable", "nmse_unreachable")}
    x = ip.make_batch(task, 2).x
    assert model.predict(x).shape == model.predict(x, offset=0).shape == (2, 4, 2)
    maps = model.attention_maps(x)
    assert len(maps) == 2 and maps[0].shape == (2, 4, 12, 12)
    assert torch.all(maps[0].triu(1) == 0)  # causal: nothing above the diagonal
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 4, 12))
    free = ip.InversePermutationTask(n=4, d_y=2, causal=False)
    tuned, hist2 = ip.train_inverter(free, steps=2, batch=4, init=model, eval_every=1, progress=False)
    assert tuned.task == free and tuned.embed.in_features == free.feature_dim
    assert set(hist2.evals[0]) == {"no mask/nmse", "no mask/nmse_reachable", "no mask/nmse_unreachable"}


def test_readout_windows_and_prefixes_agree_under_the_causal_mask():
    """By Lemma 1, window 0 of a padded causal sequence is the plain task run on the prefix."""
    torch.manual_seed(3)
    task = ip.InversePermutationTask(n=5, d_y=3, n_scratch=5)
    model = ip.PermutationInverter(task, d_model=32).eval()
    batch = ip.make_batch(task, 6, generator=gen(8))
    plain = ip.InversePermutationTask(n=5, d_y=3)
    small = model.adapt(plain)
    with torch.no_grad():
        full = model.predict(batch.x, offset=0)
        prefix = model(batch.x[:, :10])[:, 5:10]
        adapted = small.predict(batch.x[:, :10, :plain.feature_dim])
    torch.testing.assert_close(prefix, full, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(adapted, full, atol=1e-6, rtol=1e-6)
    assert ip.readout_rows(task) == slice(10, 15) and ip.readout_rows(task, 0) == slice(5, 10)
    with pytest.raises(ValueError, match="offset"):
        ip.readout_rows(task, 6)
    with pytest.raises(ValueError, match="length <="):
        small.adapt(task)


def test_row_nmse_and_figure_helpers():
    import matplotlib

    matplotlib.use("Agg")
    task = ip.InversePermutationTask(n=4, d_y=2, n_scratch=2)
    model = ip.PermutationInverter(task, d_model=16).eval()
    err = ip.row_nmse(model, torch.tensor([3, 2, 1, 0]), offset=1, samples=8, generator=gen(9))
    assert err.shape == (4,) and torch.isfinite(err).all()
    ax = ip.plot_reachability(task, torch.tensor([3, 2, 1, 0]))
    assert "of 4 out of sight" in ax.get_title()
    assert ip.row_labels(task) == ["P0", "P1", "P2", "P3", "Yp0", "Yp1", "Yp2", "Yp3", "S0", "S1"]
    widget = ip.reachability_explorer(4, {task.name: (model, 2)})
    assert widget is not None


# ---------------------------------------------------------------------------- argument checks

def test_bad_arguments_raise_value_errors_naming_them():
    with pytest.raises(ValueError, match="n must be >= 2"):
        ip.InversePermutationTask(n=1)
    with pytest.raises(ValueError, match="n_scratch"):
        ip.InversePermutationTask(n=4, n_scratch=-1)
    task = ip.InversePermutationTask(n=3, d_y=2)
    with pytest.raises(ValueError, match="sigma must hold a permutation"):
        ip.encode(task, torch.tensor([[0, 0, 1]]), torch.zeros(1, 3, 2))
    with pytest.raises(ValueError, match="y must have shape"):
        ip.encode(task, torch.tensor([[0, 2, 1]]), torch.zeros(1, 3, 5))
    with pytest.raises(ValueError, match="x must have shape"):
        ip.PermutationInverter(task)(torch.zeros(2, 7, task.feature_dim))
    with pytest.raises(ValueError, match="readouts"):
        ip.train_inverter(task, steps=1, readouts={})
    with pytest.raises(ValueError, match="n_transpositions"):
        ip.random_permutations(2, 3, n_transpositions=-1)
    with pytest.raises(ValueError, match="pred and target"):
        ip.nmse(torch.zeros(1, 3, 2), torch.zeros(1, 3, 1))
    with pytest.raises(ValueError, match="rows must be a bool"):
        ip.nmse(torch.zeros(1, 3, 2), torch.zeros(1, 3, 2), torch.ones(1, 3))
    with pytest.raises(ValueError, match="matrices\\[1\\]"):
        ip.DisentangledTransformer([torch.zeros(4, 4), torch.zeros(4, 4)], d0=4)
    with pytest.raises(ValueError, match="beta"):
        ip.handbuilt_solution(task, beta=0)
