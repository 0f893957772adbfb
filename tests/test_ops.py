"""Every op's VJP against float64 central differences (refimpl.gradcheck.check_vjp),
plus the numerics the ops promise: -inf entries, huge |x|, dtype preservation,
and cross-entropy against an independent computation."""
import warnings

import numpy as np
import pytest
import scipy.special

import refimpl
from nets import Tensor, ops
from refimpl.backend import to_numpy
from refimpl.gradcheck import check_vjp


def tensor_fn(op, args, argnum=0):
    """(f, vjp) for ``check_vjp`` from a Tensor op, differentiating argument ``argnum``.

    ``f(x)`` runs the op with ``args[argnum] = x`` and returns the output array;
    ``vjp(x, u)`` runs it on a fresh leaf and calls ``backward(u)``.
    """
    def call(x, requires_grad):
        leaf = Tensor(x, requires_grad=requires_grad)
        full = list(args)
        full[argnum] = leaf
        return leaf, op(*full)

    def f(x):
        return call(x, False)[1].data

    def vjp(x, u):
        leaf, y = call(x, True)
        y.backward(u)
        assert leaf.grad.shape == x.shape and leaf.grad.dtype == x.dtype
        return leaf.grad

    return f, vjp


def check_op(op, args, argnum=0, **kwargs):
    """Check the VJP of ``op`` with respect to ``args[argnum]`` (a float64 array)."""
    f, vjp = tensor_fn(op, args, argnum)
    check_vjp(f, vjp, args[argnum], **kwargs)


def randn(xp, rng, *shape):
    return xp.asarray(rng.standard_normal(shape))


def away_from_zero(xp, rng, *shape):
    """Normal draws pushed at least 0.1 away from 0 (no kink of relu/abs within eps)."""
    x = rng.standard_normal(shape)
    return xp.asarray(x + 0.1 * np.sign(x))


# --------------------------------------------------------------- binary ops
BROADCAST_SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)), ((), (3,)), ((5, 1), (1, 6))]
BINARY = {"add": ops.add, "sub": ops.sub, "mul": ops.mul, "div": ops.div,
          "add_op": lambda a, b: a + b, "rsub_op": lambda a, b: b - a,
          "mul_op": lambda a, b: a * b, "div_op": lambda a, b: a / b}


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=str)
def test_binary_vjp_with_broadcasting(xp, rng, name, shapes):
    a = randn(xp, rng, *shapes[0])
    b = away_from_zero(xp, rng, *shapes[1]) + 2.0     # keep divisors away from 0
    for argnum in (0, 1):
        check_op(BINARY[name], (a, b), argnum)


@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=str)
def test_where_vjp_with_broadcasting(xp, rng, shapes):
    a, b = randn(xp, rng, *shapes[0]), randn(xp, rng, *shapes[1])
    full = np.broadcast_shapes(shapes[0], shapes[1])
    cond = xp.asarray(rng.random(full) < 0.5)
    for argnum in (0, 1):
        check_op(lambda a, b: ops.where(cond, a, b), (a, b), argnum)


@pytest.mark.parametrize("shapes", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)),
                                    ((2, 1, 3, 4), (5, 4, 2)), ((4,), (4, 5)), ((3, 4), (4,)),
                                    ((4,), (4,)), ((2, 3, 4), (4,))], ids=str)
def test_matmul_vjp_batched_broadcast(xp, rng, shapes):
    a, b = randn(xp, rng, *shapes[0]), randn(xp, rng, *shapes[1])
    assert ops.matmul(Tensor(a), Tensor(b)).shape == np.matmul(to_numpy(a), to_numpy(b)).shape
    for argnum in (0, 1):
        check_op(lambda a, b: a @ b, (a, b), argnum)


def test_matmul_only_needed_gradients(rng):
    x = Tensor(rng.standard_normal((3, 4)))                      # data: no gradient computed
    W = Tensor(rng.standard_normal((4, 2)), requires_grad=True)
    (x @ W).sum().backward()
    assert x.grad is None
    np.testing.assert_allclose(W.grad, x.data.sum(0)[:, None] * np.ones((1, 2)))


# ---------------------------------------------------------------- unary ops
UNARY = {
    "neg": (lambda a: -a, randn),
    "exp": (ops.exp, randn),
    "log": (ops.log, lambda xp, rng, *s: xp.asarray(rng.uniform(0.5, 2.0, s))),
    "relu": (ops.relu, away_from_zero),
    "sigmoid": (ops.sigmoid, randn),
    "tanh": (ops.tanh, randn),
    "softplus": (ops.softplus, randn),
    "pow2": (lambda a: a ** 2, randn),
    "pow3": (lambda a: a ** 3, randn),
    "pow_half": (lambda a: a ** 0.5, lambda xp, rng, *s: xp.asarray(rng.uniform(0.5, 2.0, s))),
    "pow_neg": (lambda a: a ** -1.5, lambda xp, rng, *s: xp.asarray(rng.uniform(0.5, 2.0, s))),
    "sum_all": (lambda a: a.sum(), randn),
    "sum_axis": (lambda a: a.sum(axis=1), randn),
    "sum_axes_keepdims": (lambda a: ops.sum(a, axis=(0, 2), keepdims=True), randn),
    "mean_all": (lambda a: a.mean(), randn),
    "mean_axis": (lambda a: a.mean(axis=-1, keepdims=True), randn),
    "reshape": (lambda a: a.reshape(4, -1), randn),
    "transpose_T": (lambda a: a.T, randn),
    "transpose_axes": (lambda a: a.transpose(1, 2, 0), randn),
    "getitem_basic": (lambda a: a[1:, None, ::2, -1], randn),
    "getitem_int_array_repeats": (lambda a: a[np.array([0, 2, 0, 0])], randn),
    "getitem_mixed": (lambda a: a[:, np.array([[1, 1], [0, 2]]), 1], randn),
    "getitem_bool": (lambda a: a[np.array([True, False, True])], randn),
    "getitem_two_arrays": (lambda a: a[np.array([0, 1, 1]), np.array([2, 0, 2])], randn),
    "take_along_axis": (lambda a: ops.take_along_axis(
        a, np.array([[[0], [3], [3]], [[1], [1], [0]], [[2], [2], [2]]]), axis=2), randn),
    "take_along_axis_0": (lambda a: ops.take_along_axis(
        a, np.array([[[0, 0, 1, 2]], [[2, 2, 2, 1]]]), axis=0), randn),
    "log_softmax": (ops.log_softmax, randn),
    "log_softmax_axis0": (lambda a: ops.log_softmax(a, axis=0), randn),
    "softmax": (ops.softmax, randn),
    "softmax_axis1": (lambda a: ops.softmax(a, axis=1), randn),
    "logsumexp": (ops.logsumexp, randn),
    "logsumexp_keepdims": (lambda a: ops.logsumexp(a, axis=1, keepdims=True), randn),
    "gaussian_kl_mu": (lambda a: ops.gaussian_kl(a, _LOGVAR), randn),
    "bernoulli_ll": (lambda a: ops.bernoulli_log_likelihood(a, _BERNOULLI_X), randn),
    "bernoulli_entropy": (ops.bernoulli_entropy, lambda xp, rng, *s: xp.asarray(rng.standard_normal(s) * 4)),
    "cross_entropy": (lambda a: ops.cross_entropy(a, np.array([[0, 3, 1], [2, 2, 0], [1, 0, 3]])),
                      randn),
    "cross_entropy_axis1": (lambda a: ops.cross_entropy(a, np.array([[0, 2, 1, 2], [2, 2, 0, 1],
                                                                     [1, 0, 1, 0]]), axis=1), randn),
    "sparsemax": (ops.sparsemax, randn),
    "sparsemax_axis0": (lambda a: ops.sparsemax(a, axis=0), randn),
    "topk_sparsemax": (lambda a: ops.topk_sparsemax(a, 2), randn),
}
_LOGVAR = np.random.default_rng(8).standard_normal((3, 3, 4))
_BERNOULLI_X = np.random.default_rng(7).random((3, 3, 4))
_BERNOULLI_X[0] = np.round(_BERNOULLI_X[0])          # binary and fractional targets


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_vjp(xp, rng, name):
    op, draw = UNARY[name]
    check_op(op, (draw(xp, rng, 3, 3, 4),))   # NumPy constants in the table move to xp's device


def test_gaussian_kl_vjp_logvar_and_value(xp, rng):
    mu, logvar = randn(xp, rng, 5, 3), randn(xp, rng, 5, 3)
    check_op(ops.gaussian_kl, (mu, logvar), 1)
    check_op(ops.gaussian_kl, (mu, logvar), 0)
    m, lv = to_numpy(mu), to_numpy(logvar)
    # closed form of KL(N(m, s²) || N(0, 1)) per coordinate: log(1/s) + (s² + m²)/2 - 1/2
    s = np.exp(0.5 * lv)
    expected = (np.log(1 / s) + (s ** 2 + m ** 2) / 2 - 0.5).sum(-1)
    np.testing.assert_allclose(to_numpy(ops.gaussian_kl(Tensor(mu), Tensor(logvar)).data),
                               expected, rtol=1e-12)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concatenate_and_stack_vjp(xp, rng, axis):
    shapes = [(3, 4), (3, 4), (3, 4)]
    if axis == 0:
        cat_shapes = [(1, 4), (3, 4), (2, 4)]
    else:
        cat_shapes = [(3, 1), (3, 4), (3, 2)]
    arrays = [randn(xp, rng, *s) for s in cat_shapes]
    same = [randn(xp, rng, *s) for s in shapes]
    for i in range(3):
        check_op(lambda *ts: ops.concatenate(ts, axis=axis), arrays, i)
        check_op(lambda *ts: ops.stack(ts, axis=axis), same, i)


# ------------------------------------------------------------- mappings
def test_structured_topk_vjp_and_enumeration(xp, rng):
    from refimpl.enumeration import all_bitvectors  # noqa: PLC0415
    t = randn(xp, rng, 4, 5)
    k = 6

    def piece(x):
        bits, probs = ops.structured_topk(Tensor(x), k)
        return (to_numpy(bits), to_numpy(probs.data) == 0)

    f, vjp = tensor_fn(lambda a: ops.structured_topk(a, k)[1], (t,))
    check_vjp(f, vjp, t, piece=piece)
    # the bits are the k best of all 2^D, scored by <z, t>, and probs = sparsemax of their scores
    bits, probs = ops.structured_topk(Tensor(t), k)
    assert bits.dtype == t.dtype and bits.shape == (4, k, 5) and probs.shape == (4, k)
    allscores = to_numpy(t) @ all_bitvectors(5, np.float64).T
    best = -np.sort(-allscores, axis=1)[:, :k]
    np.testing.assert_allclose(to_numpy(bits) @ to_numpy(t)[:, :, None], best[:, :, None], atol=1e-12)
    np.testing.assert_allclose(to_numpy(probs.data), to_numpy(refimpl.sparsemax(xp.asarray(best))),
                               atol=1e-12)


@pytest.mark.parametrize("oracle", [refimpl.bitvector_oracle, refimpl.budget_oracle(2)],
                         ids=["bitvector", "budget2"])
def test_sparsemap_vjp(xp, rng, oracle):
    t = xp.asarray(rng.uniform(-0.5, 1.5, (3, 4)))

    def piece(x):
        vertices, weights = ops.sparsemap(Tensor(x), oracle)
        return (to_numpy(vertices), to_numpy(weights.data) > 0)

    f, vjp = tensor_fn(lambda a: ops.sparsemap(a, oracle)[1], (t,))
    check_vjp(f, vjp, t, piece=piece, rtol=1e-5)


def test_sparsemap_marginals_gradient_is_clip_jacobian(xp, rng):
    """For bit-vectors the marginals are clip(t, 0, 1): d<u, mu>/dt = u * 1[0 < t < 1]."""
    t = xp.asarray(rng.uniform(-0.5, 1.5, (6, 5)))
    u = xp.asarray(rng.standard_normal((6, 5)))
    leaf = Tensor(t, requires_grad=True)
    vertices, weights = ops.sparsemap(leaf, refimpl.bitvector_oracle)
    marginals = (weights.reshape(6, -1, 1) * vertices).sum(axis=1)
    np.testing.assert_allclose(to_numpy(marginals.data), np.clip(to_numpy(t), 0, 1), atol=1e-10)
    marginals.backward(u)
    inside = (to_numpy(t) > 0) & (to_numpy(t) < 1)
    np.testing.assert_allclose(to_numpy(leaf.grad), to_numpy(u) * inside, atol=1e-9)


def test_mappings_float32(rng):
    t = Tensor(rng.standard_normal((3, 6)).astype(np.float32), requires_grad=True)
    p = ops.sparsemax(t)
    bits, q = ops.structured_topk(t, 4)
    vertices, w = ops.sparsemap(t, refimpl.bitvector_oracle)
    assert p.dtype == q.dtype == w.dtype == bits.dtype == vertices.dtype == np.float32
    ((p * p).sum() + (q * q).sum() + (w * w).sum()).backward()
    assert t.grad.dtype == np.float32


# ---------------------------------------------------------- numerics
def test_log_softmax_and_logsumexp_with_neg_inf_are_finite(xp, rng):
    x = rng.standard_normal((4, 6))
    mask = np.zeros((4, 6), dtype=bool)
    mask[0, :3] = mask[1, 5] = mask[3, 1:] = True                 # row 3 keeps one finite entry
    xp_mask = xp.asarray(mask)
    free = xp.asarray(x[~mask])

    def embed(values):
        full = xp.full((4, 6), -np.inf)
        full[xp_mask == False] = values  # noqa: E712
        return full

    for name, op in [("log_softmax", ops.log_softmax), ("logsumexp", ops.logsumexp),
                     ("softmax", ops.softmax)]:
        y = op(Tensor(embed(free))).data
        finite_out = ~mask if y.shape == mask.shape else np.ones(y.shape, bool)

        def f(v, op=op, finite_out=finite_out):
            return op(Tensor(embed(v))).data[xp.asarray(finite_out)]

        def vjp(v, u, op=op, finite_out=finite_out):
            leaf = Tensor(embed(v), requires_grad=True)
            y = op(leaf)
            g = xp.zeros(y.shape)
            g[xp.asarray(finite_out)] = u
            y.backward(g)
            assert bool(xp.all(xp.isfinite(leaf.grad))), name
            assert bool(xp.all(leaf.grad[xp_mask] == 0)), name
            return leaf.grad[xp_mask == False]  # noqa: E712

        check_vjp(f, vjp, free)
    p = ops.softmax(Tensor(embed(free))).data
    assert bool(xp.all(p[xp_mask] == 0)) and float(p[3, 0]) == 1.0


def test_logsumexp_all_neg_inf_slice(xp):
    x = xp.asarray([[-np.inf, -np.inf], [0.0, -np.inf]])
    leaf = Tensor(x, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = ops.logsumexp(leaf)
        y.sum().backward()
    assert to_numpy(y.data).tolist() == [-np.inf, 0.0]
    assert to_numpy(leaf.grad).tolist() == [[0.0, 0.0], [1.0, 0.0]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softplus_sigmoid_large_inputs(xp, dtype):
    x = xp.asarray([-1e4, -800.0, -50.0, 0.0, 50.0, 800.0, 1e4], dtype=dtype)
    leaf = Tensor(x, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # no overflow warnings
        sp = ops.softplus(leaf)
        s = ops.sigmoid(leaf)
        (sp.sum() + s.sum()).backward()
    sp, s, g = to_numpy(sp.data), to_numpy(s.data), to_numpy(leaf.grad)
    assert sp.dtype == s.dtype == g.dtype == dtype
    assert np.all(np.isfinite(sp)) and np.all(np.isfinite(s)) and np.all(np.isfinite(g))
    expected = np.logaddexp(0, to_numpy(x).astype(np.float64))
    np.testing.assert_allclose(sp, expected, rtol=1e-6)
    np.testing.assert_allclose(s[[0, 3, -1]], [0.0, 0.5, 1.0])
    assert 0 < s[2] < 1e-21 and s[4] == 1.0
    ll = ops.bernoulli_log_likelihood(Tensor(x), xp.asarray([0, 0, 0, 1, 1, 1, 1], dtype=dtype))
    np.testing.assert_allclose(to_numpy(ll.data)[[0, -1]], [0.0, 0.0])
    assert np.isfinite(to_numpy(ll.data)).all()


def test_cross_entropy_matches_scipy(xp, rng):
    logits = rng.standard_normal((5, 7, 3)) * 4
    targets = rng.integers(0, 7, size=(5, 3))
    loss = ops.cross_entropy(Tensor(xp.asarray(logits)), xp.asarray(targets), axis=1)
    lse = scipy.special.logsumexp(logits, axis=1)
    picked = np.take_along_axis(logits, targets[:, None, :], axis=1)[:, 0, :]
    np.testing.assert_allclose(to_numpy(loss.data), lse - picked, rtol=1e-12)
    leaf = Tensor(xp.asarray(logits), requires_grad=True)
    ops.cross_entropy(leaf, xp.asarray(targets), axis=1).sum().backward()
    onehot = np.arange(7)[None, :, None] == targets[:, None, :]
    expected = scipy.special.softmax(logits, axis=1) - onehot
    np.testing.assert_allclose(to_numpy(leaf.grad), expected, atol=1e-12)


def test_cross_entropy_bad_targets(rng):
    logits = Tensor(rng.standard_normal((2, 3)))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\)"):
        ops.cross_entropy(logits, np.array([0, 3]))
    with pytest.raises(ValueError, match="integer array of shape"):
        ops.cross_entropy(logits, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="integer array of shape"):
        ops.cross_entropy(logits, np.array([[0, 1]]))


def test_bernoulli_ll_matches_direct_formula(rng):
    logits = rng.standard_normal((4, 5))
    x = rng.random((4, 5))
    p = scipy.special.expit(logits)
    expected = x * np.log(p) + (1 - x) * np.log1p(-p)
    np.testing.assert_allclose(ops.bernoulli_log_likelihood(Tensor(logits), x).data, expected,
                               rtol=1e-12)
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
        ops.bernoulli_log_likelihood(Tensor(logits), x + 1)


# --------------------------------------------------------------- dtypes
@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_ops_keep_float32(rng, name):
    op, draw = UNARY[name]
    x = draw(np, rng, 3, 3, 4).astype(np.float32)
    leaf = Tensor(x, requires_grad=True)
    y = op(leaf)
    assert y.dtype == np.float32, name
    y.backward(np.ones(y.shape, np.float32))
    assert leaf.grad.dtype == np.float32 and leaf.grad.shape == x.shape


def test_constants_adopt_tensor_dtype_and_mixed_tensors_raise(rng):
    a = Tensor(rng.standard_normal(3).astype(np.float32), requires_grad=True)
    for y in (a * 2.0, 2.0 - a, a / np.float64(3), a + np.ones(3), np.ones(3) * a, a @ np.ones(3),
              ops.where(np.array([True, False, True]), a, 0.0)):
        assert isinstance(y, Tensor) and y.dtype == np.float32
    with pytest.raises(TypeError, match="dtypes float32 and float64"):
        a + Tensor(np.ones(3))


def test_getitem_repeated_indices_accumulate():
    leaf = Tensor(np.arange(4.0), requires_grad=True)
    leaf[np.array([1, 1, 3, 1])].sum().backward()
    np.testing.assert_array_equal(leaf.grad, [0.0, 3.0, 0.0, 1.0])


def test_bernoulli_entropy_value_against_the_definition(xp):
    """Σ_i -p log p - (1-p) log(1-p) with p = σ(t); finite where σ rounds to 0 or 1."""
    t = np.array([[-40.0, -3.0, 0.0, 0.5, 7.0, 40.0]])
    p = 1 / (1 + np.exp(-t))
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.nan_to_num(-p * np.log(p)) + np.nan_to_num(-(1 - p) * np.log1p(-p))
    out = to_numpy(ops.bernoulli_entropy(Tensor(xp.asarray(t))).data)
    np.testing.assert_allclose(out, h.sum(axis=-1), rtol=1e-12)


def test_sparsemax_loss_lives_in_nets_losses(xp, rng):
    from nets import losses
    s = randn(xp, rng, 4, 5)
    y = np.array([0, 3, 3, 1])
    check_op(lambda a: losses.sparsemax_loss(a, y), (s,))
    assert ops.sparsemax_loss is losses.sparsemax_loss

