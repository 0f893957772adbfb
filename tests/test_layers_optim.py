"""Layers (init, forward, parameters, state dicts) and Adam (hand-computed steps,
convergence, exact resume)."""
import numpy as np
import pytest

from nets import MLP, Adam, Embedding, Linear, Module, Tensor, ops
from refimpl.backend import to_numpy


# ------------------------------------------------------------------ layers
def test_linear_init_bounds_shapes_dtype(xp):
    layer = Linear(400, 300, np.random.default_rng(0), xp=xp)
    W, b = to_numpy(layer.weight.data), to_numpy(layer.bias.data)
    assert W.shape == (400, 300) and b.shape == (300,)
    assert W.dtype == b.dtype == np.float32 and layer.weight.xp is xp
    bound = 1 / np.sqrt(400)                     # PyTorch: U(-1/sqrt(in), 1/sqrt(in))
    assert np.abs(W).max() <= bound and np.abs(b).max() <= bound
    assert np.abs(W).max() > 0.99 * bound        # the whole interval is used ...
    np.testing.assert_allclose(W.std(), bound / np.sqrt(3), rtol=0.01)   # ... uniformly
    assert abs(W.mean()) < 1e-3


def test_linear_forward_and_same_seed_same_weights(xp, rng):
    layer = Linear(4, 3, np.random.default_rng(5), xp=xp, dtype=np.float64)
    again = Linear(4, 3, np.random.default_rng(5), xp=np, dtype=np.float64)
    np.testing.assert_array_equal(to_numpy(layer.weight.data), again.weight.data)
    x = xp.asarray(rng.standard_normal((2, 5, 4)))
    y = layer(x)
    expected = to_numpy(x) @ to_numpy(layer.weight.data) + to_numpy(layer.bias.data)
    np.testing.assert_allclose(to_numpy(y.data), expected, rtol=1e-12)
    no_bias = Linear(4, 3, np.random.default_rng(5), bias=False)
    assert no_bias.bias is None and len(no_bias.parameters()) == 1
    with pytest.raises(ValueError, match="input has 5 features"):
        layer(xp.ones((2, 5)))
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        Linear(2, 2, 0)
    with pytest.raises(ValueError, match="in_features must be a positive integer"):
        Linear(0, 2, rng)


def test_linear_gradients(rng):
    layer = Linear(3, 2, rng, dtype=np.float64)
    x = rng.standard_normal((5, 3))
    layer(x).sum().backward()
    np.testing.assert_allclose(layer.weight.grad, x.sum(0)[:, None] * np.ones((1, 2)))
    np.testing.assert_allclose(layer.bias.grad, [5.0, 5.0])


def test_mlp_structure_names_and_forward(rng):
    mlp = MLP([3, 4, 2], rng, activation="tanh", dtype=np.float64)
    names = [n for n, _ in mlp.named_parameters()]
    assert names == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]
    x = rng.standard_normal((6, 3))
    l0, l1 = mlp.layers
    expected = np.tanh(x @ l0.weight.data + l0.bias.data) @ l1.weight.data + l1.bias.data
    np.testing.assert_allclose(mlp(x).data, expected, rtol=1e-12)   # no activation after the last
    with pytest.raises(ValueError, match="activation must be one of"):
        MLP([3, 2], rng, activation="gelu")


def test_parameters_deterministic_and_shared_once(rng):
    class Net(Module):
        def __init__(self):
            self.enc = MLP([2, 3, 2], np.random.default_rng(1))
            self.head = Linear(2, 1, np.random.default_rng(2))
            self.tied = self.head.weight             # shared: listed once
            self.frozen = Tensor(np.ones(2))         # not trainable: not a parameter

        def forward(self, x):
            return self.head(self.enc(x))

    a, b = Net(), Net()
    names = [n for n, _ in a.named_parameters()]
    assert names == ["enc.layers.0.weight", "enc.layers.0.bias", "enc.layers.1.weight",
                     "enc.layers.1.bias", "head.weight", "head.bias"]
    assert names == [n for n, _ in b.named_parameters()]
    assert len(a.parameters()) == 6


def test_state_dict_round_trip_and_errors(xp, rng):
    src = MLP([4, 5, 3], np.random.default_rng(1), xp=xp)
    dst = MLP([4, 5, 3], np.random.default_rng(2), xp=xp)
    state = src.state_dict()
    assert all(type(v) is np.ndarray for v in state.values())
    weight_before = dst.layers[0].weight
    dst.load_state_dict(state)
    assert dst.layers[0].weight is weight_before                 # in place, same objects
    x = xp.asarray(rng.standard_normal((2, 4)))
    np.testing.assert_array_equal(to_numpy(dst(x).data), to_numpy(src(x).data))
    state["layers.0.weight"][...] = 0                            # a copy, not a view
    assert float(xp.abs(src.layers[0].weight.data).sum()) > 0
    f64 = {k: v.astype(np.float64) for k, v in src.state_dict().items()}
    dst.load_state_dict(f64)                                     # cast to the module's dtype
    assert dst.layers[0].weight.dtype == np.float32
    with pytest.raises(KeyError, match=r"missing entries \['layers.1.bias'\]"):
        dst.load_state_dict({k: v for k, v in f64.items() if k != "layers.1.bias"})
    with pytest.raises(KeyError, match=r"unexpected entries \['extra'\]"):
        dst.load_state_dict({**f64, "extra": np.ones(1)})
    with pytest.raises(ValueError, match=r"'layers.0.bias' has shape \(4,\)"):
        dst.load_state_dict({**f64, "layers.0.bias": np.ones(4)})


def test_embedding_init_forward_and_gradient(xp):
    emb = Embedding(1000, 20, np.random.default_rng(0), xp=xp)
    W = to_numpy(emb.weight.data)
    assert W.shape == (1000, 20) and W.dtype == np.float32
    assert abs(W.mean()) < 0.02 and abs(W.std() - 1) < 0.02          # N(0, 1) like PyTorch
    idx = xp.asarray([[3, 7], [3, 3]])
    out = emb(idx)
    assert out.shape == (2, 2, 20)
    np.testing.assert_array_equal(to_numpy(out.data[1, 0]), W[3])
    out.sum().backward()
    grad = to_numpy(emb.weight.grad)
    np.testing.assert_array_equal(grad[3], np.full(20, 3.0))          # used three times
    np.testing.assert_array_equal(grad[7], np.ones(20))
    assert grad.sum() == 4 * 20
    with pytest.raises(IndexError, match=r"indices must lie in \[0, 1000\)"):
        emb(xp.asarray([1000]))
    with pytest.raises(TypeError, match="integer array"):
        emb(xp.asarray([1.0]))


# -------------------------------------------------------------------- Adam
def test_adam_two_steps_by_hand():
    p = Tensor(np.array([1.0]), requires_grad=True)
    opt = Adam([p], lr=0.1)                      # betas (0.9, 0.999), eps 1e-8
    p.grad = np.array([0.5])
    opt.step()
    # m = 0.1*0.5 = 0.05, v = 0.001*0.25 = 0.00025, bias corrections 0.1 and 0.001:
    # p = 1 - (0.1/0.1) * 0.05 / (sqrt(0.00025)/sqrt(0.001) + 1e-8) = 1 - 0.05/0.50000001
    np.testing.assert_allclose(p.data, [0.900000002], rtol=1e-15)
    p.grad = np.array([-0.25])
    opt.step()
    # m = 0.9*0.05 - 0.1*0.25 = 0.02, v = 0.999*0.00025 + 0.001*0.0625 = 0.00031225,
    # bias corrections 1-0.9² = 0.19 and 1-0.999² = 0.001999:
    # p = 0.900000002 - (0.1/0.19) * 0.02 / (sqrt(0.00031225/0.001999) + 1e-8)
    #   = 0.900000002 - 0.526315789474 * 0.02 / 0.395225400702 = 0.900000002 - 0.026633703292
    np.testing.assert_allclose(p.data, [0.873366298707846], rtol=1e-14)
    assert opt.steps == [2]


def test_adam_weight_decay_by_hand():
    p = Tensor(np.array([2.0]), requires_grad=True)
    opt = Adam([p], lr=0.1, weight_decay=0.1)
    p.grad = np.array([0.5])
    opt.step()
    # g = 0.5 + 0.1*2 = 0.7 (L2 added to the gradient), m = 0.07, v = 0.00049:
    # p = 2 - (0.1/0.1) * 0.07 / (sqrt(0.00049)/sqrt(0.001) + 1e-8) = 2 - 0.07/0.70000001
    np.testing.assert_allclose(p.data, [1.9000000014285714], rtol=1e-15)
    np.testing.assert_array_equal(p.grad, [0.5])                 # the gradient is not modified


def test_adam_minimises_a_convex_quadratic(xp, rng):
    A = rng.standard_normal((5, 5))
    A = xp.asarray(A @ A.T + np.eye(5))          # positive definite
    c = xp.asarray(rng.standard_normal(5))
    p = Tensor(xp.zeros(5), requires_grad=True)
    opt = Adam([p], lr=0.05)
    for _ in range(3000):
        opt.zero_grad()
        d = p - c
        loss = 0.5 * (d @ (A @ d))               # minimum 0 at p = c
        loss.backward()
        opt.step()
    np.testing.assert_allclose(to_numpy(p.data), to_numpy(c), atol=1e-4)


def test_adam_skips_params_without_grad_and_keeps_dtype(xp):
    a = Tensor(xp.ones(2, dtype=np.float32), requires_grad=True)
    b = Tensor(xp.ones(2, dtype=np.float32), requires_grad=True)
    opt = Adam([a, b], lr=0.1)
    (a * 3.0).sum().backward()
    opt.step()
    assert opt.steps == [1, 0] and opt.exp_avg[1] is None
    np.testing.assert_array_equal(to_numpy(b.data), [1.0, 1.0])
    assert a.dtype == np.float32 and opt.exp_avg[0].dtype == np.float32
    opt.zero_grad()
    assert a.grad is None and b.grad is None
    with pytest.raises(ValueError, match="requires_grad=True"):
        Adam([Tensor(np.ones(2))])


def _train(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        loss = ops.cross_entropy(model(x), y).mean()
        loss.backward()
        opt.step()


def test_adam_state_dict_round_trip_resumes_exactly(xp):
    rng = np.random.default_rng(3)
    batches = [(xp.asarray(rng.standard_normal((8, 4))), xp.asarray(rng.integers(0, 3, 8)))
               for _ in range(10)]

    def fresh(seed):
        model = MLP([4, 6, 3], np.random.default_rng(seed), xp=xp)
        return model, Adam(model.parameters(), lr=0.01, weight_decay=1e-4)

    model, opt = fresh(0)
    _train(model, opt, batches[:5])
    saved_model, saved_opt = model.state_dict(), opt.state_dict()
    assert set(saved_opt["state"]) == {"0", "1", "2", "3"} and saved_opt["state"]["0"]["step"] == 5
    _train(model, opt, batches[5:])

    resumed, resumed_opt = fresh(1)              # different init, overwritten by the load
    resumed.load_state_dict(saved_model)
    resumed_opt.load_state_dict(saved_opt)
    _train(resumed, resumed_opt, batches[5:])
    for (name, a), (_, b) in zip(model.named_parameters(), resumed.named_parameters()):
        np.testing.assert_array_equal(to_numpy(a.data), to_numpy(b.data), err_msg=name)
    bad = {"state": {0: {**saved_opt["state"]["0"], "exp_avg": np.ones(7)}},
           "param_groups": saved_opt["param_groups"]}
    with pytest.raises(ValueError, match=r"state\[0\]\['exp_avg'\] has shape \(7,\)"):
        resumed_opt.load_state_dict(bad)
