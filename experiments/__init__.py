"""Experiments of the paper, run as ``python -m experiments.<name>``.

``data`` loads (and checks) Fashion-MNIST and MNIST, ``common`` holds the CLI,
checkpoint, metrics and progress helpers shared by the experiments, and
``plot`` draws their curves.
"""
