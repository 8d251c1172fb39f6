"""Host-side cost of a block plan, before and after the closed-form layouts, in one run.

    python benchmarks/plan_time.py                 # N = 2048, 8192, 32768; writes benchmarks/results/plan-time-*.json
    python benchmarks/plan_time.py --n 512 1024    # quick

A training step needs the plans of two tile shapes on a GPU (128 x 64 for the forward and dQ,
64 x 128 for dK/dV at D = 64); both are timed, from a fresh mask (nothing cached).

* **before** -- the algorithm the kernel used up to issue 14: classify tiles from the dense
  mask (two int32 N x N buffers), and for masks without an in-kernel predicate render the mask a
  second time to cut out the PARTIAL tiles' bits. To fit in memory at N = 32768 (the original
  needs ~9 GB there) it is run one strip of query tiles at a time -- the same O(N^2) work, so the
  measured time is a lower bound on the original's. Above ``--full-before-max-n`` (default 8192)
  only the first ``--strips`` strips are rendered and the time is scaled by strips total / done
  (rendering costs the same per strip whatever the mask; recorded in the JSON).
* **after** -- :func:`companion.kernels.block_plan`: closed-form O(R·C) layouts, evaluating only
  the tiles a closed form cannot decide, and only the PARTIAL tiles for the bits.

Both include building the tile lists. The ratio before/after is printed per mask and N.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from companion.kernels import attention as _attention_fn  # noqa: E402,F401  (imports the package)
from companion.kernels.attention import (  # noqa: E402
    PARTIAL, FULL, EMPTY, BlockPlan, _pack_bits, _tile_lists, block_plan, describe_mask,
)
from companion.nn import masks as M  # noqa: E402

TILES = ((128, 64), (64, 128))
MASKS = ("causal", "sliding", "prefix", "padding", "segments", "set", "tree", "block_select")


def build(name: str, n: int) -> M.Mask:
    """A fresh mask (nothing cached) of each family at length ``n``."""
    if name == "causal":
        return M.CausalMask()
    if name == "sliding":
        return M.SlidingWindowMask(1024)
    if name == "prefix":
        return M.PrefixLMMask(n // 4)
    if name == "padding":
        return M.CausalMask() & M.KeyPaddingMask(torch.tensor([n, 3 * n // 4]))
    if name == "segments":
        return M.segments(torch.arange(n) * 7 // n)  # 7 packed documents
    if name == "set":
        edge = n // 16
        ids = torch.full((n,), -1)
        ids[edge:n - edge] = torch.arange(n - 2 * edge) * 8 // (n - 2 * edge)
        return M.set_based(ids)
    if name == "tree":  # a 64-node draft tree after the context (Chimera / Medusa-style verification)
        parents = [-1] + [(i - 1) // 2 for i in range(1, 64)]
        return M.TreeMask(parents, start=n - 64)
    if name == "block_select":  # PrFlashAttention / InfLLM: causal & sampled 64-blocks
        g = torch.Generator().manual_seed(0)
        r = -(-n // 64)
        return M.CausalMask() & M.BlockSelectMask(torch.rand(r, r, generator=g) < 0.3, 64, 64)
    raise ValueError(name)


def plan_before(mask: M.Mask, n: int, bm: int, bn: int, strip_bytes: int = 1 << 27,
                max_strips: int | None = None) -> tuple[BlockPlan, float]:
    """The pre-issue-14 plan: dense tile classification, and a second dense render for bit tiles.

    Returns the plan and the share of strips rendered (1.0 unless ``max_strips`` cut it short).
    """
    nbq, nbk = -(-n // bm), -(-n // bn)
    rows_per = max(1, strip_bytes // (8 * nbk * bn * bm))  # query tiles per strip (two int32 buffers)
    layout = torch.empty(mask.batch_size, nbq, nbk, dtype=torch.int8)
    needs_bits = describe_mask(mask).bits

    def render(r0: int, r1: int) -> torch.Tensor:  # (B, rows, nk) bool: the old Mask.dense on a strip
        b = torch.arange(mask.batch_size).view(-1, 1, 1)
        q = torch.arange(r0 * bm, min(r1 * bm, n)).view(1, -1, 1)
        k = torch.arange(n).view(1, 1, -1)
        return mask.mask_mod(b, torch.zeros(1, 1, 1, dtype=torch.long), q, k).expand(mask.batch_size, q.shape[1], n)

    starts = list(range(0, nbq, rows_per))
    done = starts if max_strips is None else starts[:max_strips]
    layout.fill_(PARTIAL)
    for r0 in done:
        r1 = min(r0 + rows_per, nbq)
        d = render(r0, r1)
        padded = torch.zeros(mask.batch_size, (r1 - r0) * bm, nbk * bn, dtype=torch.int32)
        valid = torch.zeros_like(padded)
        padded[:, :d.shape[1], :n] = d.int()
        valid[:, :d.shape[1], :n] = 1
        tiles = padded.view(mask.batch_size, r1 - r0, bm, nbk, bn).sum(dim=(2, 4))
        sizes = valid.view(mask.batch_size, r1 - r0, bm, nbk, bn).sum(dim=(2, 4))
        lay = torch.full_like(tiles, PARTIAL, dtype=torch.int8)
        lay[tiles == 0] = EMPTY
        lay[(tiles == sizes) & (sizes > 0)] = FULL
        layout[:, r0:r1] = lay
    if n % bn:
        last = layout[..., -1]
        last[last == FULL] = PARTIAL
    part = layout == PARTIAL
    tile_id = torch.full(layout.shape, -1, dtype=torch.int32)
    tile_id[part] = torch.arange(int(part.sum()), dtype=torch.int32)
    bits = None
    if needs_bits:  # the second render
        chunks = []
        for r0 in done:
            r1 = min(r0 + rows_per, nbq)
            d = render(r0, r1)
            padded = torch.zeros(mask.batch_size, (r1 - r0) * bm, nbk * bn, dtype=torch.bool)
            padded[:, :d.shape[1], :n] = d
            t = padded.view(mask.batch_size, r1 - r0, bm, nbk, bn).permute(0, 1, 3, 2, 4)[part[:, r0:r1]]
            chunks.append(t)
        bits = _pack_bits(torch.cat(chunks)).contiguous() if chunks else None
    # strips are in (row, batch) order; the original's bits are (batch, row): same set, reorder cheaply
    plan = BlockPlan(n, n, bm, bn, layout, _tile_lists(layout, tile_id),
                     _tile_lists(layout.transpose(1, 2), tile_id.transpose(1, 2)), bits)
    return plan, len(done) / len(starts)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(ns: list[int], masks: list[str], check: bool, full_before_max_n: int = 8192, strips: int = 2,
        out: Path | None = None) -> dict:
    rows = []
    result = dict(date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), torch=torch.__version__,
                  python=platform.python_version(), cpu=platform.processor() or platform.machine(),
                  threads=torch.get_num_threads(), tiles=TILES, results=rows,
                  note="before = the pre-issue-14 dense algorithm run in strips (a lower bound on its time); "
                       "before_share < 1: only that share of the strips was rendered and the time scaled up")
    for n in ns:
        for name in masks:
            cap = None if n <= full_before_max_n else strips
            before, share = 0.0, 1.0
            for bm, bn in TILES:
                m = build(name, n)
                t0 = time.perf_counter()
                _, share = plan_before(m, n, bm, bn, max_strips=cap)
                before += (time.perf_counter() - t0) / share
            after = timed(lambda: [block_plan(build(name, n), n, n, bm, bn) for bm, bn in TILES])
            if check:  # the two agree tile for tile
                m = build(name, n)
                for bm, bn in TILES:
                    assert torch.equal(block_plan(m, n, n, bm, bn).layout, plan_before(m, n, bm, bn)[0].layout), name
            rows.append(dict(n=n, mask=name, before_s=before, after_s=after, ratio=before / max(after, 1e-9),
                             before_share=share))
            if out is not None:  # written as it goes: a long run keeps what it measured
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(result, indent=1) + "\n")
            print(f"N={n:6d} {name:13s} before {before:8.3f} s   after {after:8.4f} s   ratio {before / after:8.1f}x",
                  flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[2048, 8192, 32768])
    p.add_argument("--masks", nargs="+", choices=MASKS, default=list(MASKS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--check", action="store_true", help="also assert both algorithms give the same layout")
    p.add_argument("--full-before-max-n", type=int, default=8192,
                   help="above this N, time the dense algorithm on --strips strips and scale")
    p.add_argument("--strips", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (default: print only)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args.n, args.masks, args.check, args.full_before_max_n, args.strips, args.out)
    if args.out is not None:
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
