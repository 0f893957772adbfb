"""Timing helpers shared by the benchmarks: best-of-n wall clock, with a GPU
synchronisation when the arrays live on a GPU."""
import platform
import time

import numpy as np



def _sync(xp):
    if xp is not np:
        xp.cuda.Device().synchronize()


def best_time(fn, *, repeat=5, min_time=0.2, xp=np):
    """Best (minimum) seconds per call of ``fn()`` over ``repeat`` rounds, each
    round running the call enough times to last about ``min_time``/repeat."""
    fn()
    _sync(xp)
    t0 = time.perf_counter()
    fn()
    _sync(xp)
    single = max(time.perf_counter() - t0, 1e-7)
    number = max(1, int(min_time / repeat / single))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        _sync(xp)
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def backend_or_exit(parser, name):
    """``get_xp(name)``, or exit 2 with the backend's one-line explanation."""
    from refimpl import get_xp
    try:
        return get_xp(name)
    except RuntimeError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


def machine_line():
    """One line naming the machine and the library versions."""
    import os
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, NumPy {np.__version__}"


def print_table(title, header, rows):
    """Print a fixed-width table."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    print(f"\n## {title}\n")
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
