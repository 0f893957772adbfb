"""Helpers of the prepared device check (benchmarks/device_check.sh).

    python -m benchmarks.device_check env                      # versions, GPU, as JSON
    python -m benchmarks.device_check compare [--steps 12] [--json FILE]
    python -m benchmarks.device_check exec MODULE [ARGS...]    # run a CLI module

``compare`` trains the bit-VAE for ``--steps`` steps on NumPy and on CuPy from
the same seed and the same images (top-k, SparseMAP, SFE; D = 32 and 128,
batch 32, float32) and prints the losses step by step with their relative
difference.  Step 1 must agree to float32 rounding; later steps may drift
apart slowly (different summation orders; SFE's sampled bits can flip where
``t_i + L_i`` is within rounding of 0).

With ``SPARSEMARG_CUPY=standin`` every subcommand runs "cupy" on the test
suite's strict CPU stand-in (tests/strict_cupy): the dry run of the device
check on a machine without a GPU.
"""
import argparse
import json
import os
import platform
import runpy
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METHODS = (("topk", {"k": 10}), ("sparsemap", {}), ("sfe", {}))
REL_TOL_FIRST_STEP = 1e-4


def install_standin_if_asked():
    """``SPARSEMARG_CUPY=standin``: make ``get_xp("cupy")`` return the CPU stand-in."""
    if os.environ.get("SPARSEMARG_CUPY") != "standin":
        return False
    sys.path.insert(0, str(ROOT / "tests"))
    import strict_cupy  # noqa: PLC0415  (the test suite's stand-in, for dry runs only)
    sys.modules["cupy"] = strict_cupy
    return True


def environment():
    """Python, NumPy, CuPy and CUDA versions and the GPUs, as a dict (never raises)."""
    from refimpl.backend import get_xp
    info = {"python": platform.python_version(), "numpy": np.__version__,
            "machine": platform.platform(), "standin": os.environ.get("SPARSEMARG_CUPY") == "standin"}
    try:
        cp = get_xp("cupy")
        info["cupy"] = cp.__version__
        rt = cp.cuda.runtime
        for key, fn in (("cuda_runtime", "runtimeGetVersion"), ("cuda_driver", "driverGetVersion")):
            if hasattr(rt, fn):
                info[key] = getattr(rt, fn)()
        info["gpus"] = rt.getDeviceCount()
        if hasattr(rt, "getDeviceProperties"):
            props = rt.getDeviceProperties(0)
            info["gpu0"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            info["gpu0_memory_gib"] = round(props["totalGlobalMem"] / 2 ** 30, 1)
    except Exception as exc:                        # noqa: BLE001  (report, never fail)
        info["cupy_error"] = f"{type(exc).__name__}: {exc}"
    return info


def _losses(xp, method, options, D, images, steps, batch):
    from benchmarks.bitvae_step import training_step
    from refimpl.backend import to_numpy
    _, step = training_step(xp, method, options, D, images, batch, noise_seed=1)
    return [float(to_numpy(step(s)[0].data)) for s in range(steps)]


def compare(steps=12, batch=32, data_dir=None):
    """``{"<method> D=<D>": {"numpy": losses, "cupy": losses, "rel": rel diffs,
    "first_step_ok": bool}}`` over ``steps`` training steps of each method and D; a missing
    or corrupt Fashion-MNIST exits 2 with one line (``_images``; no random-bytes fallback)."""
    from benchmarks.bitvae_step import _images
    from refimpl.backend import get_xp
    cp = get_xp("cupy")
    images, source = _images(batch * steps, data_dir)
    print(f"# bit-VAE, {steps} steps, batch {batch}, float32, data: {source}")
    results = {}
    for D in (32, 128):
        for method, options in METHODS:
            a = _losses(np, method, options, D, images, steps, batch)
            b = _losses(cp, method, options, D, images, steps, batch)
            rel = [abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b)]
            ok = rel[0] <= REL_TOL_FIRST_STEP and all(np.isfinite(b))
            results[f"{method} D={D}"] = {"numpy": a, "cupy": b, "rel": rel, "first_step_ok": ok}
            print(f"\n## {method}, D = {D}: step 1 rel diff {rel[0]:.2e} "
                  f"({'ok' if ok else 'MISMATCH'}), max over {steps} steps {max(rel):.2e}")
            print("| step | numpy | cupy | rel diff |\n|------|-------|------|----------|")
            for s, (x, y, r) in enumerate(zip(a, b, rel), 1):
                print(f"| {s} | {x:.6f} | {y:.6f} | {r:.2e} |")
    return results


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    standin = install_standin_if_asked()
    if argv[:1] == ["exec"]:                        # run a CLI module as python -m would
        if len(argv) < 2:
            print("usage: python -m benchmarks.device_check exec MODULE [ARGS...]", file=sys.stderr)
            return 2
        sys.argv = [argv[1], *argv[2:]]
        try:
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return 0
    p = argparse.ArgumentParser(prog="python -m benchmarks.device_check",
                                description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env", help="versions and GPUs as JSON")
    c = sub.add_parser("compare", help="bit-VAE losses step by step, NumPy vs CuPy")
    c.add_argument("--steps", type=int, default=12)
    c.add_argument("--data-dir", default=None)
    c.add_argument("--json", default=None, help="also write the losses to this file")
    args = p.parse_args(argv)
    if args.cmd == "env":
        print(json.dumps(environment(), indent=1))
        return 0
    results = compare(args.steps, data_dir=args.data_dir)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    bad = [k for k, v in results.items() if not v["first_step_ok"]]
    print(f"\ncompare: {len(results) - len(bad)}/{len(results)} runs agree at step 1"
          + (f" (stand-in: {standin})" if standin else "") + (f"; MISMATCH: {bad}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
