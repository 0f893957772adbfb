"""Parameters as one flat vector, for finite differences over every weight of a model."""
import numpy as np


def flat(params):
    """Concatenate the parameters' data into one 1-D array (a copy)."""
    return np.concatenate([p.data.ravel() for p in params])


def assign(params, vec):
    """Write ``vec`` (from :func:`flat`) back into the parameters, in place."""
    i = 0
    for p in params:
        p.data[...] = vec[i:i + p.size].reshape(p.shape)
        i += p.size
