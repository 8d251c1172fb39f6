"""Correctness of the *compiled* attention kernel on a GPU (CI only runs it in the interpreter).

    python benchmarks/check_gpu.py            # exits 1 if any check fails
    python benchmarks/check_gpu.py --cpu      # tiny shapes through the interpreter (checks the script)
    python benchmarks/check_gpu.py --json out/check.json
    python benchmarks/check_gpu.py --cpu --quick   # two dtypes, three families: checks the script only

Every mask family of the book, forward and backward, fp32 / fp16 / bf16, grouped-query heads,
irregular lengths, and split-KV decoding, each against the fp32 reference. Run it before
``benchmarks/attention.py`` on a freshly lent GPU (``benchmarks/gpu_session.sh`` runs both).
Autotuning is off unless ``COMPANION_AUTOTUNE=1``: one fixed configuration per kernel, dtype and
head dim, so each kernel compiles once per mask kind and dtype (about 75 compiles, not 360).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

if "--cpu" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from companion.kernels import reference, triton_attention  # noqa: E402
from companion.nn import masks as M  # noqa: E402

TOL = {torch.float32: 2e-3, torch.float16: 2e-2, torch.bfloat16: 6e-2}  # fp32 dots may use tf32 if allowed


def families(n: int, dev: torch.device) -> dict[str, M.Mask | None]:
    g = torch.Generator().manual_seed(0)
    seg = torch.randint(0, 5, (n,), generator=g).sort().values
    sets = torch.full((n,), -1)
    sets[n // 8: n - n // 8] = torch.arange(n - 2 * (n // 8)) * 8 // (n - 2 * (n // 8))
    sel = torch.rand(-(-n // 64), -(-n // 64), generator=g) < 0.3
    return {
        "full": None,
        "causal": M.CausalMask(),
        "sliding": M.SlidingWindowMask(n // 5),
        "prefix_per_row": M.PrefixLMMask(torch.tensor([n // 4, n // 2], device=dev)),
        "segments": M.segments(seg.to(dev)),
        "set_based": M.set_based(sets.to(dev)),
        "padding_empty_row": M.CausalMask() & M.KeyPaddingMask(torch.tensor([0, n // 3], device=dev)),
        "infllm": M.SlidingWindowMask(n // 10) | (
            M.CausalMask() & (M.KeyPaddingMask(4) | M.BlockSelectMask(sel, 64, 64))),
        "tree": M.TreeMask([-1] + [(i - 1) // 4 for i in range(1, n // 2)], start=n - n // 2),
    }


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6))


def main(cpu: bool = False, json_path: str | None = None, quick: bool = False) -> int:
    if not cpu and not torch.cuda.is_available():
        print("needs a CUDA GPU (or --cpu for a tiny interpreted run)")
        return 2
    dev = torch.device("cpu" if cpu else "cuda")
    t_start = time.perf_counter()
    failures, rows = [], []
    n, d, nk, heads = (70, 32, 300, (2, 1)) if cpu else (1000, 128, 8192, (8, 2))
    dtypes = (torch.bfloat16, torch.float32) if quick else (torch.bfloat16, torch.float16, torch.float32)
    for dtype in dtypes:
        for name, mask in families(n, dev).items():
            if quick and name not in ("causal", "set_based", "tree"):
                continue
            g = torch.Generator(device="cpu").manual_seed(1)
            h, hkv = heads
            q = torch.randn(2, h, n, d, generator=g).to(dev, dtype).requires_grad_()
            k = torch.randn(2, hkv, n, d, generator=g).to(dev, dtype).requires_grad_()
            v = torch.randn(2, hkv, n, d, generator=g).to(dev, dtype).requires_grad_()
            do = torch.randn(2, h, n, d, generator=g).to(dev, dtype)
            out = triton_attention(q, k, v, mask)
            grads = torch.autograd.grad(out, (q, k, v), do)
            qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
            ref = reference(qf, kf, vf, mask)
            ref_grads = torch.autograd.grad(ref, (qf, kf, vf), do.float())
            errs = [max_err(a.detach(), r.detach()) for a, r in zip((out, *grads), (ref, *ref_grads))]
            ok = all(e < TOL[dtype] for e in errs) and all(torch.isfinite(t).all() for t in (out, *grads))
            print(f"{str(dtype):15s} {name:18s} rel err out/dq/dk/dv = " + " ".join(f"{e:.1e}" for e in errs)
                  + ("" if ok else "   FAIL"), flush=True)
            rows.append(dict(dtype=str(dtype), mask=name, rel_err=dict(zip(("out", "dq", "dk", "dv"), errs)), ok=ok))
            if not ok:
                failures.append((dtype, name))
    for nq in ((7,) if quick else (1, 7)):  # decoding: split-KV
        mask = M.TreeMask(list(range(-1, nq - 1)), start=nk - nq)
        q = torch.randn(1, 4 * heads[1], nq, d, device=dev, dtype=torch.bfloat16)
        k, v = (torch.randn(1, heads[1], nk, d, device=dev, dtype=torch.bfloat16) for _ in range(2))
        ref = reference(q.float(), k.float(), v.float(), mask)
        for splits in ((4,) if quick else (None, 1, 4 if cpu else 16)):
            e = max_err(triton_attention(q, k, v, mask, num_splits=splits), ref)
            ok = e < TOL[torch.bfloat16]
            print(f"decode nq={nq} splits={splits}: rel err {e:.1e}" + ("" if ok else "   FAIL"), flush=True)
            rows.append(dict(dtype="torch.bfloat16", mask=f"decode nq={nq} splits={splits}", rel_err={"out": e}, ok=ok))
            if not ok:
                failures.append(("decode", nq, splits))
    seconds = time.perf_counter() - t_start
    print(("all passed" if not failures else f"FAILED: {failures}") + f" in {seconds:.0f} s")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(dict(
            device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu (interpreter)",
            torch=torch.__version__, autotune=os.environ.get("COMPANION_AUTOTUNE", "0") == "1",
            seconds=seconds, tolerances={str(k): v for k, v in TOL.items()}, results=rows,
            failures=[str(f) for f in failures]), indent=1) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    out = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
    sys.exit(main(cpu="--cpu" in sys.argv, json_path=out, quick="--quick" in sys.argv))
