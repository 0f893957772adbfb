"""Optional baseline: the authors' SparseMAP solver, per example, forward + backward.

Needs ``lpsmap`` (github.com/deep-spin/lp-sparsemap) and the ``pbernoulli`` /
``pbudget`` factors of ``lvmhelpers`` (github.com/deep-spin/sparse-marginalization-lvm),
built from source (docs/benchmarks.md says how); :func:`available` is False without
them and the benchmark prints "n/a".

Used as their training code uses it, one factor graph per example: ``2D`` binary
variables (D "on", D "off"), a Bernoulli or Budget (B = D // 2) factor, a random
initial vertex, ``solve_qp`` with ``max_iter``, ``get_sparse_solution`` and the
backward ``dist_jacobian_vec``.  They score "on" by ``x`` and "off" by 0, which
projects ``(x + 1) / 2``: for our scores ``t`` we pass ``x = 2t - 1`` and scale the
gradient by 2.
"""
import numpy as np

try:
    from lpsmap.ad3qp.factor_graph import PFactorGraph
    from lvmhelpers.pbernoulli import PFactorBernoulli
    from lvmhelpers.pbudget import PFactorBudget
except ImportError:                                   # the optional baseline is absent
    PFactorGraph = None


def available():
    return PFactorGraph is not None


def forward_backward(t, kind, g, init, max_iter=300):
    """One batch: t (N, D) float64, kind "bits" | "budget", g (N, D) cotangent of the
    marginals, init (N, 2D) random scores choosing the first vertex.  Returns the
    marginals (N, D), the gradient d<g, μ>/dt (N, D) and the support sizes (N,)."""
    N, D = t.shape
    mu, grad, support = np.empty((N, D)), np.empty((N, D)), np.empty(N, dtype=int)
    for i in range(N):
        fg = PFactorGraph()
        fg.set_verbosity(1)
        variables = [fg.create_binary_variable() for _ in range(2 * D)]
        f = PFactorBernoulli() if kind == "bits" else PFactorBudget()
        f.initialize(*((D,) if kind == "bits" else (D, D // 2)))
        fg.declare_factor(f, variables)
        f.init_active_set_from_scores(init[i], [])
        u, _ = f.solve_qp(np.concatenate([2 * t[i] - 1, np.zeros(D)]), [], max_iter=max_iter)
        active, _ = f.get_sparse_solution()
        Y = np.asarray(active, dtype=np.float64)                  # (S, D) vertices
        d_eta = np.empty(2 * D)
        f.dist_jacobian_vec(Y @ g[i], d_eta, np.empty(0))
        mu[i], grad[i], support[i] = np.asarray(u[:D]), 2 * d_eta[:D], len(active)
    return mu, grad, support
