"""Unit tests for companion.attention.unified_mixing: every fast mixer equals its explicit L x L matrix,
and attention sharded over workers (in one process and over real gloo processes) equals full attention."""

from __future__ import annotations

import pytest
import torch

from companion.attention import unified_mixing as um
from companion.nn.attention import attention
from companion.nn.masks import CausalMask


@pytest.mark.parametrize("length,window,batch", [(64, 8, 2), (50, 7, 1), (33, 33, 1)])
def test_every_fast_mixer_equals_its_matrix(length, window, batch):
    cases = um.mixer_gallery(length, 8, window, batch=batch, seed=length)
    assert set(cases) == set(um.FAMILIES)
    for name, case in cases.items():
        assert case.max_error < 1e-10, f"{name}: {case.max_error}"


def test_causal_matrices_are_lower_triangular_and_rows_stochastic():
    cases = um.mixer_gallery(40, 8, 5, seed=1)
    for name, case in cases.items():
        if case.causal:
            assert torch.equal(case.matrix, torch.tril(case.matrix)), name
    for name in ("softmax", "causal softmax", "linear (causal)", "sliding window"):
        rows = cases[name].matrix.sum(-1)
        assert torch.allclose(rows, torch.ones_like(rows), atol=1e-12), name


def test_window_matrix_is_banded():
    m = um.mixer_gallery(20, 4, 3, seed=2)["sliding window"].matrix[0]
    i, j = torch.meshgrid(torch.arange(20), torch.arange(20), indexing="ij")
    assert bool((m[(j > i) | (i - j >= 3)] == 0).all())
    assert bool((m[(j <= i) & (i - j < 3)] > 0).all())


def test_fft_conv_zero_padding_is_needed():
    """An L-point circular convolution leaks the future; the 2L-padded one does not."""
    x = torch.zeros(1, 8, 1, dtype=torch.float64)
    x[0, 7, 0] = 1.0  # impulse at the last position
    h = torch.ones(1, 8, dtype=torch.float64)
    y = um.fft_conv(x, h)
    assert torch.allclose(y[0, :7, 0], torch.zeros(7, dtype=torch.float64), atol=1e-12)
    circular = torch.fft.irfft(torch.fft.rfft(x[0, :, 0]) * torch.fft.rfft(h[0]), n=8)
    assert float(circular[:7].abs().max()) > 0.5


def test_ssm_kernel_matches_recurrence():
    decay, freq = torch.tensor([[0.1, 0.3]], dtype=torch.float64), torch.tensor([[0.5, 2.0]], dtype=torch.float64)
    coef = torch.tensor([[1 + 0.5j, -0.3 + 0.2j]], dtype=torch.complex128)
    h = um.ssm_kernel(decay, freq, coef, 6)
    lam, state, expect = torch.exp(torch.complex(-decay, freq)), coef.clone(), []
    for _ in range(6):
        expect.append(state.real.sum())
        state = state * lam
    assert torch.allclose(h[0], torch.stack(expect), atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_blockwise_attention_is_exact(causal, parts):
    g = torch.Generator().manual_seed(parts)
    q, k, v = (torch.randn(2, 3, 21, 8, generator=g, dtype=torch.float64) for _ in range(3))
    full = attention(q, k, v, CausalMask() if causal else None)
    assert torch.allclose(um.blockwise_attention(q, k, v, parts, causal), full, atol=1e-12)


def test_merge_is_not_an_average():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 6, 4, generator=g, dtype=torch.float64) for _ in range(3))
    k[..., 3:, :] *= 4  # shards with very different score scales
    parts = [um.partial_attention(q, k[:, :, lo:hi], v[:, :, lo:hi], k_offset=lo) for lo, hi in um.shard_bounds(6, 2)]
    naive = (parts[0][0] + parts[1][0]) / 2
    merged = um.merge_partials([o for o, _ in parts], [s for _, s in parts])
    assert torch.allclose(merged, attention(q, k, v), atol=1e-12)
    assert not torch.allclose(naive, merged, atol=1e-3)


def test_distributed_attention_gloo_two_processes():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 24, 8, generator=g, dtype=torch.float64) for _ in range(3))
    out, reports, _ = um.distributed_attention(q, k, v, 2, causal=True)
    assert torch.allclose(out, attention(q, k, v, CausalMask()), atol=1e-12)
    assert [r.keys for r in reports] == [(0, 12), (12, 24)]
    dense = 1 * 2 * 24 * 24 * 8
    assert all(r.score_bytes * 2 == dense for r in reports)


def test_needle_batch_places_one_needle():
    x, y = um.needle_batch(50, 20, (3, 9), generator=torch.Generator().manual_seed(0))
    needles = (x >= 16) & (x < 24)
    assert bool((needles.sum(1) == 1).all()) and bool((x[:, -1] == 24).all())
    d = 19 - needles.float().argmax(1)
    assert bool(((d >= 3) & (d <= 9)).all()) and torch.equal(x[needles], y)


def test_arguments_are_validated():
    x = torch.randn(1, 8, 4)
    with pytest.raises(ValueError, match="window"):
        um.window_mix(x, x, x, 0)
    with pytest.raises(ValueError, match="h must"):
        um.fft_conv(x, torch.randn(4, 7))
    with pytest.raises(ValueError, match="parts"):
        um.shard_bounds(4, 5)
    with pytest.raises(ValueError, match="backend"):
        um.distributed_attention(x[:, None], x[:, None], x[:, None], 2, backend="mpi")
    with pytest.raises(ValueError, match="distance"):
        um.needle_batch(2, 10, (0, 3))
    with pytest.raises(ValueError, match="decay"):
        um.ssm_kernel(-torch.ones(1, 1), torch.ones(1, 1), torch.ones(1, 1, dtype=torch.complex64), 4)


def test_needle_batch_with_distractor_labels_the_nearest_needle():
    x, y = um.needle_batch(200, 30, (3, 9), generator=torch.Generator().manual_seed(1), distractor_gap=4)
    needles = (x >= 16) & (x < 24)
    assert bool((needles.sum(1) == 2).all())
    pos = needles.float() * torch.arange(30)  # the nearest needle is the later one
    last = pos.argmax(1)
    first = torch.where(needles, torch.arange(30), 99).argmin(1)
    assert torch.equal(x[torch.arange(200), last], y) and bool((x[torch.arange(200), first] != y).all())
    assert bool(((29 - last >= 3) & (29 - last <= 9)).all()) and bool((last - first >= 4).all())
    with pytest.raises(ValueError, match="distractor_gap"):
        um.needle_batch(2, 12, (3, 9), distractor_gap=4)
