"""The ``@triton.jit`` kernels of :mod:`companion.kernels.attention` (section 4 of its anatomy).

Imported on first use by :func:`companion.kernels.attention.triton_module`, so that
``import companion.kernels`` works where Triton is not installed (macOS, Windows): there the
PyTorch reference path is used and ``impl="triton"`` says how to install Triton.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

@triton.jit
def _visible(qpos, kpos, nk, b, window,
             PREF, pref_sb, LENS, lens_sb, SEGS, segs_sb, SETS, sets_sb, pos_len, BITS_PTR, tile,
             CAUSAL: tl.constexpr, WINDOW: tl.constexpr, PREFIX: tl.constexpr, LENGTHS: tl.constexpr,
             SEGMENT: tl.constexpr, SET: tl.constexpr, BITS: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(BLOCK_M, BLOCK_N) bool: may the query at position qpos[i] attend key kpos[j]? (eq. (7))"""
    q2 = qpos[:, None]
    k2 = kpos[None, :]
    vis = tl.broadcast_to(k2 < nk, (BLOCK_M, BLOCK_N))  # query positions may be negative when Nq > Nk
    if BITS:
        r = tl.arange(0, BLOCK_M)[:, None]
        c = tl.arange(0, BLOCK_N)[None, :]
        words = tl.load(BITS_PTR + tile.to(tl.int64) * (BLOCK_M * (BLOCK_N // 32)) + r * (BLOCK_N // 32) + c // 32)
        vis = vis & (((words >> (c % 32)) & 1) != 0)
    else:
        core = tl.full((BLOCK_M, BLOCK_N), True, tl.int1)
        if CAUSAL:
            core = core & (k2 <= q2)
        if WINDOW:
            core = core & (q2 - k2 < window)
        if SEGMENT:
            sq = tl.load(SEGS + b * segs_sb + qpos, mask=qpos < pos_len, other=-1)
            sk = tl.load(SEGS + b * segs_sb + kpos, mask=kpos < pos_len, other=-2)
            core = core & (sq[:, None] == sk[None, :])
        if SET:
            sq = tl.load(SETS + b * sets_sb + qpos, mask=qpos < pos_len, other=-1)
            sk = tl.load(SETS + b * sets_sb + kpos, mask=kpos < pos_len, other=-1)
            core = core & ((sq[:, None] < 0) | (sk[None, :] < 0) | (sq[:, None] == sk[None, :]))
        if PREFIX:
            core = core | (k2 < tl.load(PREF + b * pref_sb))
        if LENGTHS:
            core = core & (k2 < tl.load(LENS + b * lens_sb))
        vis = vis & core
    return vis


@triton.jit
def _fwd_tile(acc, l_i, m_i, q, k_base, v_base, skn, svn, kb, qpos, offs_d, d_ok, nk, qk_scale, b, window,
              PREF, pref_sb, LENS, lens_sb, SEGS, segs_sb, SETS, sets_sb, pos_len, BITS_PTR, tile,
              MASKED: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr, PREFIX: tl.constexpr,
              LENGTHS: tl.constexpr, SEGMENT: tl.constexpr, SET: tl.constexpr, BITS: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASK_D: tl.constexpr,
              DOT_F32: tl.constexpr, DOT_PREC: tl.constexpr):
    """One key tile of the online softmax (eqs. (3)-(5)); FULL tiles skip all mask work."""
    kpos = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    k_ptrs = k_base + kpos[:, None] * skn + offs_d[None, :]
    v_ptrs = v_base + kpos[:, None] * svn + offs_d[None, :]
    if MASKED or MASK_D:  # FULL tiles never cross the end of the keys
        kv_ok = (kpos < nk)[:, None] & d_ok[None, :]
        k = tl.load(k_ptrs, mask=kv_ok, other=0.0)  # (BN, BD)
        v = tl.load(v_ptrs, mask=kv_ok, other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    if DOT_F32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale  # (BM, BN), log2 units
    if MASKED:
        vis = _visible(qpos, kpos, nk, b, window, PREF, pref_sb, LENS, lens_sb, SEGS, segs_sb, SETS, sets_sb,
                       pos_len, BITS_PTR, tile, CAUSAL, WINDOW, PREFIX, LENGTHS, SEGMENT, SET, BITS,
                       BLOCK_M, BLOCK_N)
        s = tl.where(vis, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet stays at zero
    p = tl.math.exp2(s - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return acc, l_i, m_new


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE,
                sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, sos, som, slb, slh, sls,
                FCNT, FIDX, PCNT, PIDX, PTILE, ORDER, list_sb, n_rows, n_cols,
                window, PREF, pref_sb, LENS, lens_sb, SEGS, segs_sb, SETS, sets_sb, pos_len, BITS_PTR,
                H, GROUP, nq, nk, q_offset, qk_scale, n_splits,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                CAUSAL: tl.constexpr, WINDOW: tl.constexpr, PREFIX: tl.constexpr, LENGTHS: tl.constexpr,
                SEGMENT: tl.constexpr, SET: tl.constexpr, BITS: tl.constexpr,
                DOT_F32: tl.constexpr, DOT_PREC: tl.constexpr):
    """Program (query block, batch x head, split): O and log2-sum-exp over its share of the listed tiles."""
    pid_m = tl.load(ORDER + tl.program_id(0))  # the block with the most tiles launches first
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    MASK_D: tl.constexpr = HEAD_DIM != BLOCK_D
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    qpos = q_offset + rows
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < nq
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + rows[:, None] * sqm + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # (BM, BD)
    if DOT_F32:
        q = q.to(tl.float32)
    k_base = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    row = (b * list_sb) * n_rows + pid_m
    cnt = tl.load(FCNT + row)
    per = tl.cdiv(cnt, n_splits)
    for j in range(pid_s * per, tl.minimum(pid_s * per + per, cnt)):
        kb = tl.load(FIDX + row.to(tl.int64) * n_cols + j)
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, skn, svn, kb, qpos, offs_d, d_ok, nk,
                                  qk_scale, b, window, PREF, pref_sb, LENS, lens_sb, SEGS, segs_sb, SETS, sets_sb,
                                  pos_len, BITS_PTR, 0, False, CAUSAL, WINDOW, PREFIX, LENGTHS, SEGMENT, SET, BITS,
                                  BLOCK_M, BLOCK_N, MASK_D, DOT_F32, DOT_PREC)
    cnt = tl.load(PCNT + row)
    per = tl.cdiv(cnt, n_splits)
    for j in range(pid_s * per, tl.minimum(pid_s * per + per, cnt)):
        kb = tl.load(PIDX + row.to(tl.int64) * n_cols + j)
        tile = tl.load(PTILE + row.to(tl.int64) * n_cols + j)
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, skn, svn, kb, qpos, offs_d, d_ok, nk,
                                  qk_scale, b, window, PREF, pref_sb, LENS, lens_sb, SEGS, segs_sb, SETS, sets_sb,
                                  pos_len, BITS_PTR, tile, True, CAUSAL, WINDOW, PREFIX, LENGTHS, SEGMENT, SET, BITS,
                                  BLOCK_M, BLOCK_N, MASK_D, DOT_F32, DOT_PREC)
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]  # rows that saw nothing: acc = 0 -> 0
    lse = tl.where(l_i > 0, m_i + tl.math.log2(l_safe), float("-inf"))
    o_base = O + b.to(tl.int64) * sob + h.to(tl.int64) * soh + pid_s.to(tl.int64) * sos
    tl.store(o_base + rows[:, None] * som + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + b.to(tl.int64) * slb + h.to(tl.int64) * slh + pid_s * sls + rows, lse, mask=row_ok)


@triton.jit
def _bwd_kv_tile(dk, dv, k, v, q_base, do_base, lse_base, delta_base, sqm, sdom, qb, kpos, offs_d, d_ok,
                 nq, nk, q_offset, qk_scale, b, window,
                 PREF, pref_sb, LENS, lens_sb, SEGS, segs_sb, SETS, sets_sb, pos_len, BITS_PTR, tile,
                 MASKED: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr, PREFIX: tl.constexpr,
                 LENGTHS: tl.constexpr, SEGMENT: tl.constexpr, SET: tl.constexpr, BITS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_F32: tl.constexpr, DOT_PREC: tl.constexpr):
    """dK, dV contributions of one query tile (eqs. (8)-(10))."""
    rows = qb * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < nq
    io_ok = row_ok[:, None] & d_ok[None, :]
    q = tl.load(q_base + rows[:, None] * sqm + offs_d[None, :], mask=io_ok, other=0.0)  # (BM, BD)
    do = tl.load(do_base + rows[:, None] * sdom + offs_d[None, :], mask=io_ok, other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(lse_base + rows, mask=row_ok, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse)  # rows that saw nothing: P = 0
    delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale  # (BM, BN)
    if MASKED:
        vis = _visible(q_offset + rows, kpos, nk, b, window, PREF, pref_sb, LENS, lens_sb, SEGS, segs_sb, SETS,
                       sets_sb, pos_len, BITS_PTR, tile, CAUSAL, WINDOW, PREFIX, LENGTHS, SEGMENT, SET, BITS,
                       BLOCK_M, BLOCK_N)
        s = tl.where(vis, s, float("-inf"))
    p = tl.math.exp2(s - lse[:, None])  # (BM, BN) softmax probabilities
    dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PREC)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
    ds = p * (dp - delta[:, None])
    dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PREC)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV,
                     sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdob, sdoh, sdom, slb, slh,
                     sdkb, sdkh, sdkn, sdvb, sdvh, sdvn,
                     FCNT, FIDX, PCNT, PIDX, PTILE, ORDER, list_sb, n_rows, n_cols,
                     window, PREF, pref_sb, LENS, lens_sb, SEGS, segs_sb, SETS, sets_sb, pos_len, BITS_PTR,
                     HKV, GROUP, nq, nk, q_offset, qk_scale, scale,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     CAUSAL: tl.constexpr, WINDOW: tl.constexpr, PREFIX: tl.constexpr, LENGTHS: tl.constexpr,
                     SEGMENT: tl.constexpr, SET: tl.constexpr, BITS: tl.constexpr,
                     DOT_F32: tl.constexpr, DOT_PREC: tl.constexpr):
    """Program (key block, batch x kv head): dK, dV summed over the query heads of its group."""
    pid_n = tl.load(ORDER + tl.program_id(0))  # the block with the most tiles launches first
    pid_bh = tl.program_id(1)
    b = pid_bh // HKV
    hk = pid_bh % HKV
    kpos = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    kv_ok = (kpos < nk)[:, None] & d_ok[None, :]
    k = tl.load(K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh + kpos[:, None] * skn + offs_d[None, :],
                mask=kv_ok, other=0.0)  # (BN, BD)
    v = tl.load(V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh + kpos[:, None] * svn + offs_d[None, :],
                mask=kv_ok, other=0.0)
    if DOT_F32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    row = (b * list_sb) * n_rows + pid_n
    fcnt = tl.load(FCNT + row)
    pcnt = tl.load(PCNT + row)
    for g in range(0, GROUP):
        h = hk * GROUP + g
        q_base = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
        do_base = DO + b.to(tl.int64) * sdob + h.to(tl.int64) * sdoh
        lse_base = LSE + b.to(tl.int64) * slb + h.to(tl.int64) * slh
        delta_base = DELTA + b.to(tl.int64) * slb + h.to(tl.int64) * slh
        for j in range(0, fcnt):
            qb = tl.load(FIDX + row.to(tl.int64) * n_cols + j)
            dk, dv = _bwd_kv_tile(dk, dv, k, v, q_base, do_base, lse_base, delta_base, sqm, sdom, qb, kpos,
                                  offs_d, d_ok, nq, nk, q_offset, qk_scale, b, window, PREF, pref_sb, LENS, lens_sb,
                                  SEGS, segs_sb, SETS, sets_sb, pos_len, BITS_PTR, 0, False, CAUSAL, WINDOW, PREFIX,
                                  LENGTHS, SEGMENT, SET, BITS, BLOCK_M, BLOCK_N, DOT_F32, DOT_PREC)
        for j in range(0, pcnt):
            qb = tl.load(PIDX + row.to(tl.int64) * n_cols + j)
            tile = tl.load(PTILE + row.to(tl.int64) * n_cols + j)
            dk, dv = _bwd_kv_tile(dk, dv, k, v, q_base, do_base, lse_base, delta_base, sqm, sdom, qb, kpos,
                                  offs_d, d_ok, nq, nk, q_offset, qk_scale, b, window, PREF, pref_sb, LENS, lens_sb,
                                  SEGS, segs_sb, SETS, sets_sb, pos_len, BITS_PTR, tile, True, CAUSAL, WINDOW,
                                  PREFIX, LENGTHS, SEGMENT, SET, BITS, BLOCK_M, BLOCK_N, DOT_F32, DOT_PREC)
    tl.store(DK + b.to(tl.int64) * sdkb + hk.to(tl.int64) * sdkh + kpos[:, None] * sdkn + offs_d[None, :],
             (dk * scale).to(DK.dtype.element_ty), mask=kv_ok)
    tl.store(DV + b.to(tl.int64) * sdvb + hk.to(tl.int64) * sdvh + kpos[:, None] * sdvn + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=kv_ok)


@triton.jit
def _bwd_q_tile(dq, q, do, lse, delta, k_base, v_base, skn, svn, kb, qpos, offs_d, d_ok, nk, qk_scale, b, window,
                PREF, pref_sb, LENS, lens_sb, SEGS, segs_sb, SETS, sets_sb, pos_len, BITS_PTR, tile,
                MASKED: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr, PREFIX: tl.constexpr,
                LENGTHS: tl.constexpr, SEGMENT: tl.constexpr, SET: tl.constexpr, BITS: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASK_D: tl.constexpr,
                DOT_F32: tl.constexpr, DOT_PREC: tl.constexpr):
    """dQ contribution of one key tile (eq. (11))."""
    kpos = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    k_ptrs = k_base + kpos[:, None] * skn + offs_d[None, :]
    v_ptrs = v_base + kpos[:, None] * svn + offs_d[None, :]
    if MASKED or MASK_D:
        kv_ok = (kpos < nk)[:, None] & d_ok[None, :]
        k = tl.load(k_ptrs, mask=kv_ok, other=0.0)  # (BN, BD)
        v = tl.load(v_ptrs, mask=kv_ok, other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    if DOT_F32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale  # (BM, BN)
    if MASKED:
        vis = _visible(qpos, kpos, nk, b, window, PREF, pref_sb, LENS, lens_sb, SEGS, segs_sb, SETS, sets_sb,
                       pos_len, BITS_PTR, tile, CAUSAL, WINDOW, PREFIX, LENGTHS, SEGMENT, SET, BITS,
                       BLOCK_M, BLOCK_N)
        s = tl.where(vis, s, float("-inf"))
    p = tl.math.exp2(s - lse[:, None])
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
    ds = p * (dp - delta[:, None])
    dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
    return dq


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, O, LSE, DELTA, DQ,
                   sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdob, sdoh, sdom, sob, soh, som, slb, slh,
                   sdqb, sdqh, sdqm,
                   FCNT, FIDX, PCNT, PIDX, PTILE, ORDER, list_sb, n_rows, n_cols,
                   window, PREF, pref_sb, LENS, lens_sb, SEGS, segs_sb, SETS, sets_sb, pos_len, BITS_PTR,
                   H, GROUP, nq, nk, q_offset, qk_scale, scale,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   CAUSAL: tl.constexpr, WINDOW: tl.constexpr, PREFIX: tl.constexpr, LENGTHS: tl.constexpr,
                   SEGMENT: tl.constexpr, SET: tl.constexpr, BITS: tl.constexpr,
                   DOT_F32: tl.constexpr, DOT_PREC: tl.constexpr):
    """Program (query block, batch x head): delta = rowsum(dO * O) (stored for the dK/dV kernel), then dQ."""
    pid_m = tl.load(ORDER + tl.program_id(0))  # the block with the most tiles launches first
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    MASK_D: tl.constexpr = HEAD_DIM != BLOCK_D
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    qpos = q_offset + rows
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < nq
    d_ok = offs_d < HEAD_DIM
    io_ok = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + rows[:, None] * sqm + offs_d[None, :],
                mask=io_ok, other=0.0)  # (BM, BD)
    do = tl.load(DO + b.to(tl.int64) * sdob + h.to(tl.int64) * sdoh + rows[:, None] * sdom + offs_d[None, :],
                 mask=io_ok, other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + b.to(tl.int64) * slb + h.to(tl.int64) * slh + rows, mask=row_ok, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse)
    o = tl.load(O + b.to(tl.int64) * sob + h.to(tl.int64) * soh + rows[:, None] * som + offs_d[None, :],
                mask=io_ok, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)  # (BM,) eq. (9), fused into the prologue
    tl.store(DELTA + b.to(tl.int64) * slb + h.to(tl.int64) * slh + rows, delta, mask=row_ok)
    k_base = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    row = (b * list_sb) * n_rows + pid_m
    for j in range(0, tl.load(FCNT + row)):
        kb = tl.load(FIDX + row.to(tl.int64) * n_cols + j)
        dq = _bwd_q_tile(dq, q, do, lse, delta, k_base, v_base, skn, svn, kb, qpos, offs_d, d_ok, nk, qk_scale, b,
                         window, PREF, pref_sb, LENS, lens_sb, SEGS, segs_sb, SETS, sets_sb, pos_len, BITS_PTR, 0,
                         False, CAUSAL, WINDOW, PREFIX, LENGTHS, SEGMENT, SET, BITS, BLOCK_M, BLOCK_N, MASK_D,
                         DOT_F32, DOT_PREC)
    for j in range(0, tl.load(PCNT + row)):
        kb = tl.load(PIDX + row.to(tl.int64) * n_cols + j)
        tile = tl.load(PTILE + row.to(tl.int64) * n_cols + j)
        dq = _bwd_q_tile(dq, q, do, lse, delta, k_base, v_base, skn, svn, kb, qpos, offs_d, d_ok, nk, qk_scale, b,
                         window, PREF, pref_sb, LENS, lens_sb, SEGS, segs_sb, SETS, sets_sb, pos_len, BITS_PTR, tile,
                         True, CAUSAL, WINDOW, PREFIX, LENGTHS, SEGMENT, SET, BITS, BLOCK_M, BLOCK_N, MASK_D,
                         DOT_F32, DOT_PREC)
    tl.store(DQ + b.to(tl.int64) * sdqb + h.to(tl.int64) * sdqh + rows[:, None] * sdqm + offs_d[None, :],
             (dq * scale).to(DQ.dtype.element_ty), mask=io_ok)


def interpreter_ready() -> bool:
    """True when Triton runs kernels in its interpreter, its own jit library (tl.zeros, ...) included."""
    return os.environ.get("TRITON_INTERPRET") == "1" and type(tl.zeros).__name__ == "InterpretedFunction"
