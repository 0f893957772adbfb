"""The public API is annotated, and a non-finite loss is an error of its own type."""
import inspect

import numpy as np
import pytest

import nets
import refimpl
from nets.estimators import NonFiniteLossError, make_estimator
from refimpl import numerics

UNTYPED_FOR_NOW: set = set()


def _unannotated(fn):
    sig = inspect.signature(fn)
    missing = [name for name, p in sig.parameters.items()
               if name != "self" and p.annotation is inspect.Parameter.empty]
    if sig.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


def _public_functions():
    names = [n for n in refimpl.__all__ if n not in UNTYPED_FOR_NOW]
    objs = [getattr(refimpl, n) for n in names] + [getattr(numerics, n) for n in numerics.__all__]
    from refimpl import enumeration, gradcheck
    objs += [getattr(enumeration, n) for n in enumeration.__all__] + [gradcheck.zero_pattern]
    return [f for f in objs if inspect.isfunction(f)]


@pytest.mark.parametrize("fn", _public_functions(), ids=lambda f: f.__name__)
def test_public_refimpl_functions_are_annotated(fn):
    assert _unannotated(fn) == [], f"{fn.__module__}.{fn.__name__}"


@pytest.mark.parametrize("cls", [nets.Tensor, nets.Module, nets.Linear, nets.MLP, nets.Embedding,
                                 nets.Adam], ids=lambda c: c.__name__)
def test_public_nets_classes_are_annotated(cls):
    for name, member in vars(cls).items():
        fn = member.fget if isinstance(member, property) else member
        if fn is None or getattr(fn, "__module__", None) != cls.__module__:
            continue            # the operator methods attached by nets/__init__.py (one-line lambdas)
        if inspect.isfunction(fn) and (not name.startswith("_") or name in ("__init__", "__call__")):
            assert _unannotated(fn) == [], f"{cls.__name__}.{name}"


def test_non_finite_loss_raises_its_own_type():
    est = make_estimator("sparsemax", "categorical")
    scores = nets.Tensor(np.array([[1.0, 0.9, -2.0]]), requires_grad=True)
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        est(scores, lambda idx, z: nets.Tensor(np.full(idx.shape[0], np.nan)))
    with pytest.raises(NonFiniteLossError, match="scores contain NaN"):
        est(nets.Tensor(np.array([[1.0, np.nan]])), lambda idx, z: nets.Tensor(np.zeros(idx.shape[0])))
    assert issubclass(NonFiniteLossError, ValueError)
    with pytest.raises(ValueError) as err:                 # other bad input stays a plain ValueError
        est(nets.Tensor(np.ones(3)), lambda idx, z: None)
    assert not isinstance(err.value, NonFiniteLossError)
