"""A deliberately crashing sparsemax, to see what ``--isolate`` does.

It aborts the whole process on the K = 1 cases, the way a C++ extension does
when it frees a bad pointer (``free(): invalid pointer``, exit 134):

    python -m refimpl.crosscheck --mapping sparsemax --impl docs/examples/crashing_sparsemax.py:sparsemax
    python -m refimpl.crosscheck --mapping sparsemax --impl docs/examples/crashing_sparsemax.py:sparsemax --isolate
"""
import os

import refimpl


def sparsemax(x):
    """refimpl's sparsemax, except that it aborts the process when there is one category."""
    if x.shape[-1] == 1:
        os.write(2, b"free(): invalid pointer\n")
        os.abort()
    return refimpl.sparsemax(x)
