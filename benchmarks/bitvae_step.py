"""Speed of one bit-vector VAE training step (experiments.bitvae), NumPy or CuPy.

    python -m benchmarks.bitvae_step [--backend numpy|cupy] [--batches N] [--data-dir DIR] [--quick]
        [--synthetic]

For top-k sparsemax (k = 10) and SparseMAP at D = 32 and 128, batch 64, float32,
from a freshly initialised model on the first Fashion-MNIST training images
(a missing or corrupt dataset exits 2 with one line; ``--synthetic`` times random bytes): seconds per 100 training batches
(encoder, sparse mapping, decoder, backward, Adam; measured over ``--batches``
and scaled to 100) and milliseconds per decoded (example, z) row -- the step
time divided by the rows the decoder evaluated, the number the authors' PyTorch
code (3.4-5.2 ms per row on a 2-core CPU) is compared with.  Beside it, the
decoder alone (forward + backward) per row with the fused head
(:func:`experiments.bitvae_model.pixel_categorical_nll`) and with the same
model written with generic ops (matmul, cross_entropy), run here.

Run as a script, OPENBLAS_NUM_THREADS defaults to 1 (see experiments.bitvae).
"""
import os

if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import sys
import time

import numpy as np

from experiments.bitvae import batch_objective
from experiments.cli import cli_error
from experiments.bitvae_model import BitVAE
from nets import Adam
from nets.estimators import make_estimator

from ._timing import backend_or_exit, _sync, machine_line, print_table

TARGET_MS_PER_ROW = 1.0


def _images(n, data_dir=None, synthetic=False, prog=None):
    """(n, 784) uint8 and their source: the first Fashion-MNIST training images, or random
    bytes with ``synthetic``; a missing or corrupt dataset exits 2 with one line."""
    if synthetic:
        return np.random.default_rng(0).integers(0, 256, (n, 784), dtype=np.uint8), "random bytes"
    from experiments.data import DataError, load_images
    try:
        return load_images("fashion-mnist", "train", data_dir)[:n].reshape(n, -1), "Fashion-MNIST"
    except (DataError, ValueError, OSError) as exc:
        cli_error(prog, f"cannot load Fashion-MNIST ({exc}); pass --data-dir DIR, or --synthetic "
                        "to time random bytes")


def training_step(xp, method, options, D, images, batch, noise_seed=0):
    """``(model, step)``: a fresh bit-VAE (init seed 0) with ``method``'s estimator and Adam
    (lr 1e-3); ``step(s)`` trains on the ``s``-th batch of ``images`` (cycling) and returns
    ``(objective, estimate)``.  The noise generator is ``default_rng(noise_seed)``."""
    model = BitVAE(D, np.random.default_rng(0), xp=xp)
    est = make_estimator(method, "bits", **options)
    opt, rng = Adam(model.parameters(), lr=1e-3), np.random.default_rng(noise_seed)
    X = xp.asarray(images)

    def step(s):
        objective, e = batch_objective(model, est, X[(s * batch) % len(X):][:batch], rng)
        opt.zero_grad()
        objective.backward()
        opt.step()
        return objective, e

    return model, step


def time_steps(xp, method, D, images, batches, batch=64):
    """Seconds per step and decoded rows per step over ``batches`` steps (after 2 warm-up)."""
    model, step = training_step(xp, method, {"k": 10} if method == "topk" else {}, D, images, batch)
    rows = 0
    for s in range(2):
        step(s)
    _sync(xp)
    start = time.perf_counter()
    for s in range(batches):
        rows += int(step(s + 2)[1].calls.sum())
    _sync(xp)
    seconds = time.perf_counter() - start
    return seconds / batches, rows / batches, model


def time_decoder(xp, model, rows, fused, repeat=3):
    """Best seconds per row of the decoder alone (forward + backward) on ``rows`` rows."""
    rng = np.random.default_rng(1)
    z = xp.asarray((rng.random((rows, model.bits)) < 0.5).astype(np.float32))
    x = xp.asarray(rng.integers(0, 256, (rows, 784), dtype=np.uint8))
    best = float("inf")
    for _ in range(repeat):
        _sync(xp)
        start = time.perf_counter()
        model.zero_grad()
        model.decode_nll(z, x, fused=fused).sum().backward()
        _sync(xp)
        best = min(best, time.perf_counter() - start)
    return best / rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.bitvae_step",
                                description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    p.add_argument("--batches", type=int, default=20,
                   help="training batches timed per configuration (reported per 100)")
    p.add_argument("--data-dir", default=None, help="folder with fashion-mnist/ (see experiments.data)")
    p.add_argument("--quick", action="store_true", help="D = 32 only, 5 batches (a smoke run)")
    p.add_argument("--synthetic", action="store_true",
                   help="time random bytes instead of Fashion-MNIST (no dataset needed)")
    args = p.parse_args(argv)
    xp = backend_or_exit(p, args.backend)
    batches = 5 if args.quick else max(1, args.batches)
    images, source = _images(64 * (batches + 2), args.data_dir, args.synthetic, p.prog)
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    print(f"# benchmarks.bitvae_step, backend {args.backend}: {machine_line()}; "
          f"OPENBLAS_NUM_THREADS={threads}; data: {source}; load average "
          f"{os.getloadavg()[0]:.1f}")
    rows_out = []
    for D in ([32] if args.quick else [32, 128]):
        for method in ("topk", "sparsemap"):
            sec, rows, model = time_steps(xp, method, D, images, batches)
            n = max(64, int(rows))
            fused = time_decoder(xp, model, n, True, repeat=5)
            unfused = time_decoder(xp, model, n, False, repeat=1)
            ms_row = sec / rows * 1e3
            rows_out.append([method, D, f"{rows / 64:.1f}", f"{sec * 100:.1f}", f"{ms_row:.3f}",
                             f"{fused * 1e3:.3f}", f"{unfused * 1e3:.3f}",
                             f"{unfused / fused:.1f}x",
                             "yes" if ms_row <= TARGET_MS_PER_ROW else "NO"])
    print_table(f"bit-VAE training step, batch 64, float32, fresh model ({batches} batches timed)",
                ["method", "D", "calls/example", "s per 100 batches", "ms per row (step)",
                 "decoder ms/row fused", "decoder ms/row unfused ops", "fused speed-up",
                 f"<= {TARGET_MS_PER_ROW} ms/row"], rows_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
