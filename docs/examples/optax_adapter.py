"""Adapter: optax's simplex projection as a batched sparsemax for the cross-checker.

``optax.projections.projection_simplex`` projects a whole pytree (here: one
1-D array) onto the simplex; ``jax.vmap`` maps it over the leading axes.  The
cross-checker moves the categories to the last axis (this function has no
``axis`` parameter) and differentiates it with ``jax.vjp``:

    python -m refimpl.crosscheck --mapping sparsemax --framework jax \
        --impl docs/examples/optax_adapter.py:projection_simplex_lastaxis
"""
import jax
import optax


def projection_simplex_lastaxis(x):
    """``x : (..., K)`` -> the projection of each last-axis slice onto the simplex."""
    flat = x.reshape(-1, x.shape[-1])
    return jax.vmap(optax.projections.projection_simplex)(flat).reshape(x.shape)
