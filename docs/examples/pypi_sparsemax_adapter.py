"""Adapter: the PyPI ``sparsemax`` package's ``nn.Module`` class as a function for the cross-checker.

``--impl sparsemax:Sparsemax`` names the class; the checker needs something it
can call on a tensor, so pass an instance (the one line below):

    python -m refimpl.crosscheck --mapping sparsemax --framework torch \
        --impl docs/examples/pypi_sparsemax_adapter.py:f
"""
import sparsemax

f = sparsemax.Sparsemax(dim=-1)
