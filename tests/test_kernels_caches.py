"""No cache of the kernel outlives the values it was built from (issue 14: a SegmentMask whose ids
were changed in place kept its plan: max error 1.21), every cache is bounded, and the package
imports without triton."""

import os
import subprocess
import sys
from pathlib import Path

import importlib

import pytest
import torch

from companion.kernels import block_plan, reference, triton_attention
from companion.nn import masks as M

N, BM, BN = 37, 16, 32
ROOT = Path(__file__).resolve().parents[1]
A = importlib.import_module("companion.kernels.attention")  # the module (the package exports a function of that name)


def _qkv(b=2, seed=0, nq=N, nk=N, d=16):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 2, nq, d, generator=g), torch.randn(b, 1, nk, d, generator=g),
            torch.randn(b, 1, nk, d, generator=g))


def _err(q, k, v, mask):
    out = triton_attention(q, k, v, mask, block_m=BM, block_n=BN)
    return float((out - reference(q, k, v, mask)).abs().max())


def _seg():
    return torch.tensor([0] * 10 + [1] * 20 + [2] * 7)


def _sets():
    return torch.tensor([-1] * 5 + [0] * 12 + [1] * 12 + [-1] * 8)


# (build from a caller's tensor, change that caller tensor in place, change the mask's own tensor in place)
CASES = {
    "segment": (lambda t: M.segments(t), _seg, lambda t: t.__setitem__(slice(5, 30), 3),
                lambda m: m.parts[1].ids.__setitem__((0, slice(0, 25)), 7)),
    "set": (lambda t: M.set_based(t), _sets, lambda t: t.fill_(-1),
            lambda m: m.parts[1].ids.__setitem__((0, slice(5, 29)), 0)),
    "prefix_lm": (lambda t: M.PrefixLMMask(t), lambda: torch.tensor([2, 30]), lambda t: t.fill_(0),
                  lambda m: m.prefix_len.__setitem__(0, 33)),
    "key_padding": (lambda t: M.CausalMask() & M.KeyPaddingMask(t), lambda: torch.tensor([37, 9]),
                    lambda t: t.fill_(37), lambda m: m.parts[1].lengths.__setitem__(0, 3)),
    "block_select": (lambda t: M.CausalMask() & M.BlockSelectMask(t, 8, 8), lambda: torch.eye(5, dtype=torch.bool),
                     lambda t: t.fill_(True), lambda m: m.parts[1].selected.fill_(True)),
    "tree": (lambda t: M.TreeMask(t, start=N - 6), lambda: torch.tensor([-1, 0, 0, 1, 2, -1]),
             lambda t: t.fill_(-1), lambda m: m.ancestors.fill_(True)),
    "dense": (lambda t: M.DenseMask(t), lambda: M.segments(_seg()).dense(N),
              lambda t: t.__setitem__((slice(None), slice(None), slice(0, 10)), True),
              lambda m: m.matrix.__setitem__((slice(None), slice(20, None), slice(None)), False)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_in_place_changes_never_reuse_a_stale_plan(name):
    build, make, change_caller, change_mask = CASES[name]
    q, k, v = _qkv()
    src = make()
    mask = build(src)
    before = M.DenseMask(mask.dense(N).clone())  # what the mask meant when it was built
    assert _err(q, k, v, mask) < 1e-5  # fills every cache: plan, layout, kernel arguments
    change_caller(src)
    # the caller's tensor is copied (or, for the large DenseMask matrix, tracked by its version)
    meaning = mask.dense(N)
    assert torch.equal(meaning, before.matrix) == (name != "dense"), "the mask copies what it is built from"
    assert _err(q, k, v, mask) < 1e-5
    dense_before = mask.dense(N).clone()
    change_mask(mask)
    assert not torch.equal(mask.dense(N), dense_before), "the test must really change the mask"
    assert _err(q, k, v, mask) < 1e-5  # the kernel follows: a new plan and new kernel arguments


def test_issue_measurement_segment_ids_changed_in_place():
    q, k, v = _qkv()
    ids = _seg()
    mask = M.SegmentMask(ids)
    triton_attention(q, k, v, mask, block_m=BM, block_n=BN)
    mask.ids[0, 12:] = 5  # the issue changed the int64 ids in place after a first call
    assert _err(q, k, v, mask) < 1e-5


def test_bool_tensor_mask_changed_in_place():
    q, k, v = _qkv()
    keep = torch.rand(2, N, N, generator=torch.Generator().manual_seed(1)) > 0.5
    assert _err(q, k, v, keep) < 1e-5
    keep[:, :, :20] = ~keep[:, :, :20]  # same tensor object, new values: cached by id() before
    assert _err(q, k, v, keep) < 1e-5
    keep.view(-1)[:100] = True  # through a view (shares the version counter)
    assert _err(q, k, v, keep) < 1e-5


def test_state_key_follows_values_and_shares_nothing_stale():
    m = M.segments(_seg())
    key = m.state_key()
    assert m.state_key() == key
    m.parts[1].ids[0, 0] = 9
    assert m.state_key() != key
    w = M.SlidingWindowMask(4)
    k4 = w.state_key()
    w.window = 5
    assert w.state_key() != k4
    with torch.inference_mode():  # no version counter: never cached, always recomputed
        t = M.SegmentMask(torch.tensor([0, 0, 1]))
    assert t.state_key() is None


def test_caches_are_bounded():
    mask = M.CausalMask()
    for nk in range(1, 3 * A.PLANS_PER_MASK):  # decoding: one plan per length before
        block_plan(mask, 1, nk, 16, 32)
    assert len(A._PLANS[mask]) <= A.PLANS_PER_MASK
    lay_mask = M.SlidingWindowMask(3)
    for n in range(1, 3 * M.LAYOUT_CACHE_SIZE):
        lay_mask.block_layout(n, n, 4, 4)
    assert len(lay_mask._layout_cache) <= M.LAYOUT_CACHE_SIZE
    for _ in range(20):
        q, k, v = _qkv(b=1, nq=4, nk=8)
        triton_attention(q, k, v, torch.ones(4, 8, dtype=torch.bool), block_m=BM, block_n=BN)
    assert len(A._TENSOR_MASKS) <= A._TENSOR_MASKS.maxsize


def test_block_plan_accepts_a_layout():
    mask = M.CausalMask()
    lay = torch.full((1, 3, 2), M.PARTIAL, dtype=torch.int8)  # conservative: every tile PARTIAL
    plan = block_plan(mask, 37, 37, 16, 32, layout=lay)
    assert torch.equal(plan.layout, lay) and plan.fraction(M.PARTIAL) == 1.0
    with pytest.raises(ValueError, match="layout must be an int8"):
        block_plan(mask, 37, 37, 16, 32, layout=lay[:, :2])


def test_imports_without_triton():
    """``import companion.kernels`` works where triton is missing; auto falls back, triton says how to install."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from companion.kernels import attention, triton_available, TritonUnavailableError\n"
        "from companion.nn import masks as M\n"
        "assert not triton_available()\n"
        "q = k = v = torch.randn(1, 2, 5, 8)\n"
        "out = attention(q, k, v, M.CausalMask(), impl='auto')\n"
        "assert torch.allclose(out, attention(q, k, v, M.CausalMask(), impl='torch'))\n"
        "try:\n"
        "    attention(q, k, v, impl='triton')\n"
        "except TritonUnavailableError as e:\n"
        "    assert 'pip install triton' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('impl=triton did not raise')\n"
        "print('ok')\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr
