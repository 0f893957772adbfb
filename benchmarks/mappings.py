"""Speed of the sparse mappings, forward + backward, against baselines run here.

    python -m benchmarks.mappings [--backend numpy|cupy] [--quick]

Tables: sparsemax paths (the default textbook path against each candidate
fast path; docs/benchmarks.md says which is kept, on which backend), sparsemax (ours vs a textbook sort-based NumPy sparsemax, and vs
``entmax.sparsemax`` on PyTorch when installed), structured top-k (k-best
bit-vectors + sparsemax), and SparseMAP: the default solver, the plain active set
from one vertex, and the authors' per-example solver when it is built
(benchmarks/authors_sparsemap.py).
"""
import argparse
import sys

import numpy as np

from refimpl import (bitvector_oracle, budget_oracle, kbest_bitvectors, sparsemap,
                     sparsemap_vjp, sparsemax, sparsemax_vjp, to_numpy)

from refimpl._faces import capped_projection

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


def _exact_marginal_vjp(T, g, budget):
    """The exact Jacobian of the projection applied to g (mask; less the mean
    over the free set where the budget binds): what a spanning support gives."""
    mu = np.clip(T, 0, 1) if budget is None else capped_projection(T, budget)
    free = (mu > 0) & (mu < 1)
    out = np.where(free, g, 0.0)
    if budget is not None:
        binds = (np.clip(T, 0, 1).sum(1) > budget) & free.any(1)
        mean = (out.sum(1) / np.maximum(free.sum(1), 1))[:, None]
        out = np.where(binds[:, None] & free, out - mean, out)
    return out


def _ours(xp, t, g, oracle, cold):
    def run():
        res = sparsemap(t, oracle, init=oracle(t) if cold else None)
        gw = xp.einsum("nsd,nd->ns", res.vertices, g)            # cotangent of <g, μ>
        return res, sparsemap_vjp(res, gw)
    return run


def bench_sparsemap(xp, Ds, batch):
    """Forward + backward of <g, μ> through the weights, float64, per batch."""
    from . import authors_sparsemap as authors
    rows = []
    for scores in ("onehot", "normal"):
        for D in Ds:
            rng = np.random.default_rng(2)
            x = rng.standard_normal((batch, D))
            T = (x + 1) / 2 if scores == "onehot" else x
            G = rng.standard_normal((batch, D))
            t, g = xp.asarray(T), xp.asarray(G)
            for name, oracle, budget in (("bits", bitvector_oracle, None),
                                         ("budget", budget_oracle(D // 2), D // 2)):
                exact = _exact_marginal_vjp(T, G, budget)
                cells = [scores, D, name]
                times = {}
                for label, cold in (("ours", False), ("cold", True)):
                    run = _ours(xp, t, g, oracle, cold)
                    res, grad = run()
                    times[label] = best_time(run, repeat=3, xp=xp)
                    support = to_numpy(res.weights > 0).sum(1)
                    ok = np.abs(to_numpy(grad) - exact).max(1) <= 1e-9
                    cells += [res.n_iter, f"{support.mean():.1f}", f"{ok.mean():.0%}",
                              f"{times[label] * 1e3:.2f}"]
                if authors.available():
                    init = rng.random((batch, 2 * D))
                    run = lambda: authors.forward_backward(T, name, G, init)  # noqa: E731
                    _, agrad, asupport = run()
                    times["authors"] = best_time(run, repeat=1, min_time=0, xp=np)
                    aok = np.abs(agrad - exact).max(1) <= 1e-9
                    cells += [f"{asupport.mean():.1f}", f"{aok.mean():.0%}",
                              f"{times['authors'] * 1e3:.1f}",
                              f"{times['authors'] / times['ours']:.1f}x"]
                else:
                    cells += ["n/a"] * 4
                rows.append(cells)
    print_table(f"SparseMAP forward+backward of <g, mu>, batch {batch}, float64 solves "
                f"(ms per batch; 'exact' = rows whose gradient is the exact Jacobian to 1e-9; "
                f"onehot = (x+1)/2, x ~ N(0,1); cold = init=oracle(t), the plain active set)",
                ["scores", "D", "polytope", "iter", "support", "exact", "ours ms",
                 "cold iter", "cold support", "cold exact", "cold ms",
                 "authors support", "authors exact", "authors ms", "authors/ours"], rows)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.mappings", description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    p.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    p.add_argument("--only", choices=["paths", "sparsemax", "topk", "sparsemap"],
                   help="run one table (default: all)")
    args = p.parse_args(argv)
    xp = backend_or_exit(p, args.backend)
    print(f"# benchmarks.mappings, backend {args.backend}: {machine_line()}")
    Ks = [10, 256] if args.quick else [10, 256, 4096, 65536]
    if args.only in (None, "paths"):          # run under OPENBLAS_NUM_THREADS=1 and 2
        bench_sparsemax_paths(xp, [10, 4096] if args.quick else [10, 64, 256, 1024, 4096, 16384],
                              batch=256)
    if args.only in (None, "sparsemax"):
        bench_sparsemax(xp, Ks, batch=64 if args.quick else 1024)
    if args.only in (None, "topk"):
        bench_topk(xp, [32, 128], batch=64, k=10)
    if args.only in (None, "sparsemap"):
        bench_sparsemap(xp, [32] if args.quick else [32, 128], batch=64)
    return 0


if __name__ == "__main__":
    sys.exit(main())
