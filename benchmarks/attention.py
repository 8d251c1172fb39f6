"""Structured-attention benchmark: the book's kernel vs SDPA vs FlexAttention, measured in one run.

On a GPU (the issue's shapes: B=4, H=16, D=128, N in {2048, 8192}, bf16)::

    python benchmarks/attention.py

CPU smoke test (tiny shapes; our kernel through the Triton interpreter, FlexAttention eager)::

    python benchmarks/attention.py --smoke

Masks: causal; prefix-LM with an N/4 prefix; sliding window of 1024; set-based prompt with 8
set elements (a prefix of N/16 tokens, 8 equal elements, a suffix of N/16 tokens); a token tree
(N/2 context tokens, then N/2 nodes of a 4-ary tree, each seeing the context and its ancestors).
Autotuning is off unless ``COMPANION_AUTOTUNE=1`` (one fixed configuration per dtype and head dim). TFLOP/s count
only the visible (unmasked) query-key pairs: forward ``4·B·H·D·pairs``, backward 2.5x that.
Results (device, versions, date, every timing) go to ``benchmarks/results/`` as JSON, with a plot.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from companion.kernels import attention as companion_attention  # noqa: E402
from companion.nn import masks as M  # noqa: E402

MASKS = ("causal", "prefix", "sliding", "set", "tree")
IMPLS = ("ours", "sdpa", "flex")
MODES = ("fwd", "fwd+bwd")
# What one H100 measured for FlexAttention / SDPA (the compass baseline), forward, N = 8192.
COMPASS = {"flex": {"causal": 411, "prefix": 413, "sliding": 315, "set": 397}, "sdpa": {"causal": 619},
           "bf16 matmul": 798}
TARGETS = {"flex": 1.1, "sdpa_causal": 0.9}


def build_mask(name: str, n: int, window: int, device: torch.device) -> M.Mask:
    """The benchmark's masks for sequence length ``n`` (per-sequence tensors on ``device``)."""
    if name == "causal":
        return M.CausalMask()
    if name == "prefix":
        return M.PrefixLMMask(torch.tensor([n // 4], device=device))
    if name == "sliding":
        return M.SlidingWindowMask(window)
    if name == "set":
        edge = n // 16
        ids = torch.full((n,), -1, dtype=torch.long)
        ids[edge:n - edge] = torch.arange(n - 2 * edge) * 8 // (n - 2 * edge)  # 8 equal set elements
        return M.CausalMask() & M.SetMask(ids.to(device))
    if name == "tree":
        nodes = n - n // 2
        tree = M.TreeMask([-1] + [(i - 1) // 4 for i in range(1, nodes)], start=n // 2)
        tree.parents, tree.ancestors = tree.parents.to(device), tree.ancestors.to(device)
        return tree
    raise ValueError(f"mask must be one of {MASKS}, got {name!r}")


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> float:
    """Median wall time of ``fn`` in milliseconds (CUDA: triton's do_bench with L2 flushes)."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=warmup * 10, rep=reps * 10, return_mode="median"))
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def make_impls(mask: M.Mask, name: str, n: int, batch: int, device: torch.device, flex_compile: bool):
    """Callables ``f(q, k, v) -> out`` per implementation, for one mask and length."""
    import torch.nn.functional as F

    dense = mask.dense(n, device=device)[:, None]  # (1, 1, N, N) bool, for SDPA

    def sdpa(q, k, v):
        if name == "causal":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=dense)

    def ours(q, k, v):
        return companion_attention(q, k, v, mask, impl="triton")

    out = {"ours": ours, "sdpa": sdpa}
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return out, dense
    block_mask = create_block_mask(lambda b, h, qi, ki: mask.mask_mod(b, h, qi, ki), None, None, n, n,
                                   device=str(device))
    flex = torch.compile(flex_attention, dynamic=False) if flex_compile else flex_attention
    out["flex"] = lambda q, k, v: flex(q, k, v, block_mask=block_mask)
    return out, dense


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    B, H, D = args.batch, args.heads, args.dim
    rows = []
    for n in args.n:
        g = torch.Generator(device="cpu").manual_seed(0)
        q, k, v, do = (torch.randn(B, H, n, D, generator=g).to(device=device, dtype=dtype) for _ in range(4))
        for mname in args.masks:
            mask = build_mask(mname, n, args.window, device)
            impls, dense = make_impls(mask, mname, n, B, device, args.flex_compile)
            pairs = int(dense.sum())  # visible pairs of one (batch, head)
            flops = {"fwd": 4.0 * B * H * D * pairs}
            flops["fwd+bwd"] = 3.5 * flops["fwd"]
            with torch.no_grad():
                want = impls["sdpa"](q, k, v).float()
            for iname in args.impls:
                if iname not in impls:
                    print(f"  {iname}: not available in this torch", flush=True)
                    continue
                f = impls[iname]
                with torch.no_grad():
                    err = float((f(q, k, v).float() - want).abs().max())  # also warms up (plans, compiles)
                for mode in args.modes:
                    if mode == "fwd":
                        def step(f=f):
                            with torch.no_grad():
                                f(q, k, v)
                    else:
                        qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

                        def step(f=f, qg=qg, kg=kg, vg=vg):
                            qg.grad = kg.grad = vg.grad = None
                            f(qg, kg, vg).backward(do)
                    try:
                        ms = time_ms(step, device, args.warmup, args.reps)
                    except NotImplementedError as err:  # e.g. FlexAttention has no backward on CPU
                        print(f"N={n:6d} {mname:8s} {iname:5s} {mode:8s} skipped: {err}", flush=True)
                        continue
                    tflops = flops[mode] / (ms * 1e-3) / 1e12
                    rows.append(dict(n=n, mask=mname, impl=iname, mode=mode, ms=ms, tflops=tflops,
                                     max_abs_err_vs_sdpa=err, visible_fraction=pairs / n / n))
                    print(f"N={n:6d} {mname:8s} {iname:5s} {mode:8s} {ms:10.3f} ms {tflops:9.3f} TFLOP/s "
                          f"(max |ours - sdpa| {err:.1e})", flush=True)
    return dict(device=_device_name(device), torch=torch.__version__, triton=_version("triton"),
                python=platform.python_version(), date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                smoke=args.smoke, config=dict(batch=B, heads=H, dim=D, n=args.n, dtype=args.dtype,
                                              window=args.window, flex_compiled=args.flex_compile,
                                              interpreter=os.environ.get("TRITON_INTERPRET") == "1",
                                              autotune=os.environ.get("COMPANION_AUTOTUNE", "0") == "1"),
                results=rows, compass_h100=COMPASS, targets=TARGETS,
                verdict=None if args.smoke else verdict(rows))  # interpreter timings say nothing about speed


def verdict(rows: list[dict]) -> list[dict]:
    """Ratios against the targets: >= 1.1x Flex on every mask, >= 0.9x SDPA on causal."""
    by = {(r["n"], r["mask"], r["impl"], r["mode"]): r["tflops"] for r in rows}
    out = []
    for (n, mask, impl, mode), ours in by.items():
        if impl != "ours":
            continue
        for base, need in (("flex", TARGETS["flex"]), ("sdpa", TARGETS["sdpa_causal"])):
            if base == "sdpa" and mask != "causal":
                continue
            ref = by.get((n, mask, base, mode))
            if ref:
                out.append(dict(n=n, mask=mask, mode=mode, baseline=base, ratio=ours / ref, target=need,
                                met=ours / ref >= need))
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["results"]
    ns = sorted({r["n"] for r in rows})
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    fig, axes = plt.subplots(len(ns), len(modes), figsize=(5.5 * len(modes), 3.2 * len(ns)), squeeze=False)
    for i, n in enumerate(ns):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            masks = [m for m in MASKS if any(r["mask"] == m and r["n"] == n for r in rows)]
            impls = [x for x in IMPLS if any(r["impl"] == x for r in rows)]
            width = 0.8 / max(len(impls), 1)
            for t, impl in enumerate(impls):
                vals = [next((r["tflops"] for r in rows if (r["n"], r["mask"], r["impl"], r["mode"]) ==
                              (n, m, impl, mode)), math.nan) for m in masks]
                ax.bar([x + t * width for x in range(len(masks))], vals, width, label=impl)
            ax.set_xticks([x + width * (len(impls) - 1) / 2 for x in range(len(masks))], masks)
            ax.set_ylabel("TFLOP/s (visible pairs)")
            if result["smoke"]:
                ax.set_yscale("log")  # interpreter vs native: orders of magnitude apart
            ax.set_title(f"{mode}, N={n}", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize=8)
    kind = "CPU smoke test: Triton interpreter, not a speed measurement" if result["smoke"] else result["device"]
    fig.suptitle(f"Structured attention, {result['config']['dtype']}, B={result['config']['batch']} "
                 f"H={result['config']['heads']} D={result['config']['dim']} -- {kind}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _version(pkg: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny CPU shapes: checks the script, not the speed")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--n", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--masks", nargs="+", choices=MASKS, default=list(MASKS))
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--no-flex-compile", dest="flex_compile", action="store_false",
                   help="run FlexAttention eagerly (unfused; the default compiles it)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    if args.smoke:
        args.device, args.batch, args.heads, args.dim, args.dtype = "cpu", 1, 2, 32, "fp32"
        args.n, args.window, args.warmup, args.reps, args.flex_compile = [64], 32, 0, 1, False
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda requested but CUDA is not available (use --smoke on CPU)")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    slug = "cpu-smoke" if args.smoke else result["device"].lower().replace(" ", "-")
    stem = args.out / f"attention-{slug}-{result['date'][:10]}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, stem.with_suffix(".png"))
    for v in result["verdict"] or []:
        print(f"N={v['n']:6d} {v['mask']:8s} {v['mode']:8s} ours/{v['baseline']} = {v['ratio']:.2f} "
              f"(target {v['target']}) {'met' if v['met'] else 'NOT met'}")
    print(f"wrote {stem}.json and {stem}.png")
    return stem


if __name__ == "__main__":
    main()
