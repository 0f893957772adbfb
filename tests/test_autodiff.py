"""The engine: topological order, accumulation, shape checks, no_grad, unbroadcast."""
import threading
import time

import numpy as np
import pytest

from nets import Tensor, no_grad, ops, unbroadcast
from nets.autodiff import is_grad_enabled, make_output
from refimpl.backend import to_numpy


def test_tensor_used_twice_accumulates_both_contributions(xp):
    x = Tensor(xp.asarray([1.0, -2.0, 3.0]), requires_grad=True)
    (x * x).sum().backward()                     # d/dx x² = 2x: both operands contribute
    np.testing.assert_array_equal(to_numpy(x.grad), [2.0, -4.0, 6.0])
    y = Tensor(xp.asarray([1.0, 2.0]), requires_grad=True)
    (y + y + y).sum().backward()
    np.testing.assert_array_equal(to_numpy(y.grad), [3.0, 3.0])


def test_diamond_graph(xp):
    a = Tensor(xp.asarray(2.0), requires_grad=True)
    b = a * 3.0                                  # two paths from a to d
    c = ops.exp(a)
    d = b * c                                    # d = 3 a e^a, d' = 3 e^a (1 + a)
    d.backward()
    np.testing.assert_allclose(float(a.grad), 3 * np.exp(2.0) * 3.0)


def test_leaf_gradients_accumulate_across_backward_calls_without_double_counting(xp):
    a = Tensor(xp.asarray([1.0, 2.0]), requires_grad=True)
    h = a * 2.0                                  # intermediate used twice
    loss = (h * h).sum()                         # = 4 a², grad 8 a
    loss.backward()
    np.testing.assert_allclose(to_numpy(a.grad), [8.0, 16.0])
    loss.backward()                              # += on the leaf; intermediates start afresh
    np.testing.assert_allclose(to_numpy(a.grad), [16.0, 32.0])
    assert h.grad is None                        # intermediates keep no gradient ...
    a.zero_grad()
    h.retain_grad()                              # ... unless asked
    loss.backward()
    np.testing.assert_allclose(to_numpy(h.grad), 2 * to_numpy(h.data))
    np.testing.assert_allclose(to_numpy(a.grad), [8.0, 16.0])


def test_leaf_grad_is_not_aliased(xp):
    a = Tensor(xp.ones(3), requires_grad=True)
    b = Tensor(xp.ones(3), requires_grad=True)
    g = xp.asarray([1.0, 2.0, 3.0])
    (a + b).backward(g)                          # add's VJP passes g through to both
    a.grad *= 10                                 # user edits one gradient in place
    np.testing.assert_array_equal(to_numpy(b.grad), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(to_numpy(g), [1.0, 2.0, 3.0])


def test_chain_of_depth_10000(xp):
    x = Tensor(xp.asarray([0.5, -1.0]), requires_grad=True)
    y = x
    start = time.perf_counter()
    for _ in range(10_000):
        y = y * 1.0001 + 0.001
    y.sum().backward()                           # no recursion: no RecursionError
    np.testing.assert_allclose(to_numpy(x.grad), [1.0001 ** 10_000] * 2, rtol=1e-9)
    del y                                        # freeing a deep graph must not crash either
    assert time.perf_counter() - start < 20


def test_backward_non_scalar_without_grad_raises(xp):
    y = Tensor(xp.ones((2, 3)), requires_grad=True) * 2.0
    with pytest.raises(ValueError, match=r"one-element tensor, got shape \(2, 3\).*grad="):
        y.backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\), expected .*\(2, 3\)"):
        y.backward(xp.ones(3))
    y.backward(xp.ones((2, 3)))                  # with an explicit cotangent it works


def test_backward_without_requires_grad_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        (Tensor(np.ones(2)) * 2.0).sum().backward()


def test_wrong_vjp_shape_is_reported_with_the_op_name():
    a = Tensor(np.ones((2, 3)), requires_grad=True)
    bad = make_output(a.data.sum(0), (a,), lambda g: (g,), "buggy_sum")
    with pytest.raises(RuntimeError, match=r"op buggy_sum: the gradient for input 0 has shape \(3,\)"):
        bad.sum().backward()
    bad_dtype = make_output(a.data * 2, (a,), lambda g: (g.astype(np.float32),), "buggy_cast")
    with pytest.raises(RuntimeError, match="op buggy_cast.*dtype float32"):
        bad_dtype.sum().backward()


def test_no_grad_builds_no_graph(xp):
    x = Tensor(xp.ones(3), requires_grad=True)
    with no_grad():
        assert not is_grad_enabled()
        y = (x * 2.0 + 1.0).sum()
        with no_grad():                          # nests
            pass
        assert not is_grad_enabled()
    assert is_grad_enabled()
    assert not y.requires_grad and y._parents == () and y._vjp is None
    with pytest.raises(RuntimeError):
        y.backward()
    with pytest.raises(KeyError):                # restored after an exception too
        with no_grad():
            raise KeyError
    assert is_grad_enabled()
    assert (x * 2.0).requires_grad


def test_no_grad_is_thread_local():
    seen = []
    with no_grad():
        thread = threading.Thread(target=lambda: seen.append(is_grad_enabled()))
        thread.start()
        thread.join()
    assert seen == [True]


def test_constants_get_no_gradient_and_ops_on_constants_build_no_graph():
    c = Tensor(np.ones(3))
    x = Tensor(np.ones(3), requires_grad=True)
    assert not (c * 2.0).requires_grad
    (x * c).sum().backward()
    assert c.grad is None


@pytest.mark.parametrize("grad_shape, shape", [((4, 3), (3,)), ((2, 4, 3), (4, 1)), ((2, 3), ()),
                                               ((5, 1, 3), (1, 1, 3)), ((2, 3), (2, 3))])
def test_unbroadcast_sums_back(grad_shape, shape):
    g = np.random.default_rng(0).standard_normal(grad_shape)
    out = unbroadcast(g, shape)
    assert out.shape == shape
    # <unbroadcast(g), v> = <g, broadcast(v)> for any v: unbroadcast is broadcast's adjoint
    v = np.random.default_rng(1).standard_normal(shape)
    np.testing.assert_allclose(np.sum(out * v), np.sum(g * np.broadcast_to(v, grad_shape)))


def test_unbroadcast_rejects_incompatible_shapes():
    with pytest.raises(ValueError, match="cannot be summed back"):
        unbroadcast(np.ones((4, 3)), (2,))


def test_operator_overloads_and_reflected_ops_with_arrays():
    x = Tensor(np.array([[1.0, 2.0], [3.0, 4.0]]), requires_grad=True)
    y = (1.0 - x) / 2.0 + 3.0 / x - (-x) ** 2 + np.ones(2) * x @ np.eye(2) + x.T.transpose()
    assert isinstance(y, Tensor)
    expected = (1 - x.data) / 2 + 3 / x.data - x.data ** 2 + x.data + x.data
    np.testing.assert_allclose(y.data, expected)
    y.mean().backward()
    np.testing.assert_allclose(x.grad, (-0.5 - 3 / x.data ** 2 - 2 * x.data + 2) / 4)
    assert isinstance(np.ones(2) + x, Tensor) and isinstance(np.ones((2, 2)) @ x, Tensor)


def test_tensor_attributes(xp):
    t = Tensor(xp.zeros((2, 3), dtype=np.float32), requires_grad=True)
    assert t.shape == (2, 3) and t.ndim == 2 and t.dtype == np.float32 and t.xp is xp
    assert t.grad is None and t.is_leaf and len(t) == 2
    assert "requires_grad=True" in repr(t)
    with pytest.raises(TypeError, match="floating tensor"):
        Tensor(np.arange(3), requires_grad=True)
    with pytest.raises(TypeError, match="already a Tensor"):
        Tensor(t)
    assert not t.detach().requires_grad and t.detach().data is t.data
