"""Speed of the sparse mappings, forward + backward, against baselines run here.

    python -m benchmarks.mappings [--backend numpy|cupy] [--quick]

Tables: sparsemax paths (the default textbook path against each candidate
fast path; docs/benchmarks.md says which is kept, on which backend), sparsemax (ours vs a textbook sort-based NumPy sparsemax, and vs
``entmax.sparsemax`` on PyTorch when installed), structured top-k (k-best
bit-vectors + sparsemax), and SparseMAP (batched vs a per-example loop of
the same algorithm).
"""
import argparse
import sys

import numpy as np

from refimpl import (bitvector_oracle, budget_oracle, kbest_bitvectors, sparsemap,
                     sparsemap_vjp, sparsemax, sparsemax_vjp)

from ._timing import backend_or_exit, best_time, machine_line, print_table


def textbook_sparsemax(s):
    """Martins & Astudillo (2016), Alg. 1, as usually written: full sort."""
    z = np.sort(s, axis=-1)[:, ::-1]
    ks = np.arange(1, s.shape[-1] + 1, dtype=s.dtype)
    csum = np.cumsum(z, axis=-1)
    k_star = np.sum(1 + ks * z > csum, axis=-1, keepdims=True)
    tau = (np.take_along_axis(csum, k_star - 1, axis=-1) - 1) / k_star
    return np.maximum(s - tau, 0)


def textbook_vjp(p, g):
    u = (p > 0).astype(g.dtype)
    return u * (g - (u * g).sum(-1, keepdims=True) / u.sum(-1, keepdims=True))


def ones_matmul_sparsemax(s):
    """A rejected candidate (kept here to re-measure): the textbook formula with
    its sums and cumulative sums as products with (triangular) matrices of ones."""
    z = np.sort(s, axis=-1)[:, ::-1]
    K = s.shape[-1]
    ks = np.arange(1, K + 1, dtype=s.dtype)
    csum = z @ np.triu(np.ones((K, K), dtype=s.dtype))
    k_star = ((1 + ks * z > csum).astype(s.dtype) @ np.ones((K, 1), dtype=s.dtype)).astype(np.int64)
    tau = (np.take_along_axis(csum, k_star - 1, axis=-1) - 1) / k_star
    return np.maximum(s - tau, 0)


def bench_sparsemax_paths(xp, Ks, batch):
    """Forward only: the default textbook path against each candidate fast path,
    the same inputs, in this process (ratio > 1: the candidate is faster)."""
    from refimpl.sparsemax import _default_path, _sparsemax_rows
    rng = np.random.default_rng(3)
    rows = []
    for K in Ks:
        s = xp.asarray(rng.standard_normal((batch, K)).astype(np.float32))
        text = best_time(lambda: _sparsemax_rows(s, path="textbook"), xp=xp)
        part = best_time(lambda: _sparsemax_rows(s, path="partition"), xp=xp) if xp is np else None
        ones = best_time(lambda: ones_matmul_sparsemax(s), xp=xp) if xp is np and K <= 1024 else None
        rows.append([K, f"{text * 1e3:.3f}",
                     f"{part * 1e3:.3f} ({text / part:.2f}x)" if part else "n/a",
                     f"{ones * 1e3:.3f} ({text / ones:.2f}x)" if ones else "n/a",
                     _default_path(xp, K)])
    print_table(f"sparsemax paths, forward, batch {batch}, float32 (ms per call; textbook/path)",
                ["K", "textbook (default)", "partition candidates", "matmul with ones (rejected)",
                 "used"], rows)


def _entmax_timer(s, g):
    """A closure timing entmax.sparsemax forward+backward on PyTorch, or None."""
    try:
        import torch
        from entmax import sparsemax as entmax_sparsemax
    except ImportError:
        return None
    torch.set_num_threads(max(1, torch.get_num_threads()))
    x = torch.from_numpy(s).requires_grad_(True)
    gt = torch.from_numpy(g)

    def run():
        x.grad = None
        entmax_sparsemax(x, dim=-1).backward(gt)
    return run


def bench_sparsemax(xp, Ks, batch):
    rng = np.random.default_rng(0)
    rows = []
    for K in Ks:
        s_np = rng.standard_normal((batch, K)).astype(np.float32)
        g_np = rng.standard_normal((batch, K)).astype(np.float32)
        s, g = xp.asarray(s_np), xp.asarray(g_np)
        ours = best_time(lambda: sparsemax_vjp(sparsemax(s), g), xp=xp)
        text = best_time(lambda: textbook_vjp(textbook_sparsemax(s_np), g_np))
        ent = _entmax_timer(s_np, g_np)
        ent_t = best_time(ent) if ent else None
        rows.append([K, f"{ours * 1e3:.3f}", f"{text * 1e3:.3f}", f"{text / ours:.2f}x",
                     f"{ent_t * 1e3:.3f}" if ent_t else "n/a",
                     f"{ent_t / ours:.2f}x" if ent_t else "n/a"])
    print_table(f"sparsemax forward+backward, batch {batch}, float32 (ms per call)",
                ["K", "ours", "textbook", "textbook/ours", "entmax (torch)", "entmax/ours"], rows)


def bench_topk(xp, Ds, batch, k):
    rng = np.random.default_rng(1)
    rows = []
    for D in Ds:
        t = xp.asarray(rng.standard_normal((batch, D)).astype(np.float32))
        g = xp.asarray(rng.standard_normal((batch, k)).astype(np.float32))

        def step():
            bits, scores = kbest_bitvectors(t, k)
            probs = sparsemax(scores)
            gs = sparsemax_vjp(probs, g)
            return xp.einsum("bk,bkd->bd", gs, bits.astype(t.dtype))
        sec = best_time(step, xp=xp)
        rows.append([D, k, f"{sec * 1e3:.3f}", "<= 2 ms" if D == 128 else ""])
    print_table(f"structured top-k sparsemax forward+backward, batch {batch} (ms per batch)",
                ["D", "k", "ours", "target"], rows)


def bench_sparsemap(xp, Ds, batch):
    rng = np.random.default_rng(2)
    rows = []
    for D in Ds:
        t = xp.asarray(rng.standard_normal((batch, D)))
        for name, oracle in (("bits", bitvector_oracle), (f"budget B={D // 2}", budget_oracle(D // 2))):
            def batched():
                res = sparsemap(t, oracle)
                return sparsemap_vjp(res, xp.ones_like(res.weights))

            def looped():
                for b in range(batch):
                    res = sparsemap(t[b:b + 1], oracle)
                    sparsemap_vjp(res, xp.ones_like(res.weights))
            res = sparsemap(t, oracle)
            sec_b = best_time(batched, repeat=3, xp=xp)
            sec_l = best_time(looped, repeat=1, min_time=0, xp=xp)
            support = float(xp.mean(xp.sum(res.weights > 0, axis=-1)))
            rows.append([D, name, f"{support:.1f}", res.n_iter, f"{sec_b * 1e3:.2f}",
                         f"{sec_l * 1e3:.1f}", f"{sec_l / sec_b:.1f}x",
                         "<= 10 ms" if D == 128 else ""])
    print_table(f"SparseMAP forward+backward, batch {batch}, t ~ N(0, 1), float64 (ms per batch)",
                ["D", "polytope", "mean support", "iterations", "batched", "per-example loop",
                 "speed-up", "target"], rows)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.mappings", description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    p.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    p.add_argument("--paths-only", action="store_true",
                   help="only the sparsemax paths table (run under OPENBLAS_NUM_THREADS=1 and 2)")
    args = p.parse_args(argv)
    xp = backend_or_exit(p, args.backend)
    print(f"# benchmarks.mappings, backend {args.backend}: {machine_line()}")
    Ks = [10, 256] if args.quick else [10, 256, 4096, 65536]
    bench_sparsemax_paths(xp, [10, 64, 256, 1024, 4096, 16384] if not args.quick else [10, 4096],
                          batch=256)
    if args.paths_only:
        return 0
    bench_sparsemax(xp, Ks, batch=64 if args.quick else 1024)
    bench_topk(xp, [32, 128], batch=64, k=10)
    bench_sparsemap(xp, [32] if args.quick else [32, 128], batch=64)
    return 0


if __name__ == "__main__":
    sys.exit(main())
