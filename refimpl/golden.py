"""Golden cases: a versioned battery of inputs with exactly computed answers.

    python -m refimpl.golden --out DIR [--cases GLOB ...]

writes ``DIR/index.json`` and one ``DIR/<file>.npz`` per case (format:
docs/crosscheck.md §Golden files).  Each case holds

    x    (*shape)        the input (scores, or bit scores t), in the case's dtype
    y    (*out)          the expected output, correctly rounded from the exact rational value
    g    (2, *out)       two fixed cotangents (dtype of the case)
    vjp  (2, *shape)     J(x)^T g for each, correctly rounded from the exact value
    jac  (N, out, in)    dense Jacobian per slice, categories last (small cases only)
    bits (N, k, D) uint8 topk_bits only: the k best bit-vectors, best first

Mappings (the user's function must compute the same thing):

    sparsemax         x (..., K) -> p (..., K) along ``axis``
    topk_sparsemax    x (..., K), k -> sparsemax of the k largest scores
    topk_bits         t (N, D), k -> (bits (N, k, D), p (N, k)): top-k sparsemax over
                      the 2^D bit-vectors with scores <a_z, t>
    sparsemap_bits    t (N, D) -> marginals mu = clip(t, 0, 1)
    sparsemap_budget  t (N, D), B -> marginals: projection onto {mu in [0,1]^D, Σmu <= B}

For SparseMAP the distribution ξ over structures is not unique, so the golden
values are the unique marginals μ and the VJP of ``<μ, g>`` w.r.t. ``t``.

Cases are deterministic functions of ``GOLDEN_VERSION`` and their name: bump the
version whenever any case changes.  The battery is the list of specs at the
end of this module (inputs and why each case exists); exact values come from
:mod:`refimpl._exact`.
"""
import argparse
import fnmatch
import functools
import hashlib
import io
import json
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import _exact as E

__all__ = ["GOLDEN_VERSION", "MAPPINGS", "Case", "build_cases", "cases", "write_golden",
           "read_golden", "main"]

GOLDEN_VERSION = "2"
MAPPINGS = ("sparsemax", "topk_sparsemax", "topk_bits", "sparsemap_bits", "sparsemap_budget")
N_COTANGENTS = 2
JAC_MAX = 16          # dense Jacobians for slices with at most this many inputs and outputs

# Tolerances in units of eps(dtype) * scale (see tolerance()).  ``fwd``:
# forward output; ``vjp``: each VJP.  Justification: docs/crosscheck.md.
ULPS = {"sparsemax": (8, 8), "topk_sparsemax": (8, 8), "topk_bits": (8, 16),
        "sparsemap_bits": (16, 16), "sparsemap_budget": (16, 16)}


@dataclass
class Case:
    """One golden case: metadata (``meta``, the JSON index entry) and arrays."""
    meta: dict
    arrays: dict = field(repr=False)

    @property
    def name(self):
        return self.meta["name"]

    def __getattr__(self, key):
        try:
            return self.__dict__["meta"][key]
        except KeyError:
            raise AttributeError(key) from None


def case_seed(name, version=GOLDEN_VERSION):
    """The 48-bit seed of a case (exact in any JSON reader): the first 6 bytes,
    little-endian, of ``sha256(f"{version}:{name}")``."""
    return int.from_bytes(hashlib.sha256(f"{version}:{name}".encode()).digest()[:6], "little")


def tolerance(mapping, dtype, y, g, vjp):
    """Absolute tolerances ``ulps * eps(dtype) * scale`` for the forward and the VJP.

    scale: ``max(1, max|y|)`` for the forward, ``max(max|g|, max|vjp|)`` for the VJP.
    ulps: :data:`ULPS`; for SparseMAP at least ``4 D`` (D = the last axis).
    """
    eps = float(np.finfo(dtype).eps)
    fwd_ulps, vjp_ulps = ULPS[mapping]
    if mapping.startswith("sparsemap"):            # active set: up to D + 1 vertices
        fwd_ulps = vjp_ulps = max(fwd_ulps, 4 * y.shape[-1])
    fwd_scale = max(1.0, float(np.max(np.abs(y))))
    vjp_scale = max(float(np.max(np.abs(g))), float(np.max(np.abs(vjp))))
    return {"forward": {"ulps": fwd_ulps, "scale": fwd_scale, "atol": fwd_ulps * eps * fwd_scale},
            "vjp": {"ulps": vjp_ulps, "scale": vjp_scale, "atol": vjp_ulps * eps * vjp_scale}}


def _complete(spec, version):
    """Spec (inputs) -> Case with exact outputs, cotangents, VJPs and tolerances.

    The spec's input generator is redrawn (same rng, so still deterministic)
    while the exact solver rejects the input (ties that make the answer
    depend on a tie-break, or a kink of the capped simplex)."""
    name, mapping, dtype = spec["name"], spec["mapping"], np.dtype(spec["dtype"])
    axis, params = spec.get("axis", -1), spec.get("params", {})
    rng = np.random.default_rng(case_seed(name, version))
    for _ in range(100):
        x = spec["x"](rng).astype(dtype)
        try:
            rows = E.exact_rows(mapping, E.slices(x, axis), params)
            break
        except ValueError:
            continue
    else:
        raise RuntimeError(f"golden case {name}: no admissible input in 100 draws")
    n_in = x.shape[axis]
    n_out = params["k"] if mapping == "topk_bits" else n_in
    y = E.exact_output(rows, x, axis, dtype, n_out)
    g = rng.standard_normal((N_COTANGENTS,) + y.shape).astype(dtype)
    vjp = np.stack([E.exact_vjp(rows, gi, x, axis, dtype) for gi in g])
    arrays = {"x": x, "y": y, "g": g, "vjp": vjp}
    if max(n_in, n_out) <= JAC_MAX:
        arrays["jac"] = E.exact_jacobian(rows, n_out, dtype)
    if mapping == "topk_bits":
        arrays["bits"] = np.array([b for _, _, b in rows], dtype=np.uint8).reshape(y.shape + (n_in,))
    meta = {"name": name, "golden_version": version, "seed": case_seed(name, version),
            "mapping": mapping, "dtype": dtype.name, "shape": list(x.shape), "axis": axis,
            **params, "description": spec["description"],
            "tolerance": tolerance(mapping, dtype, y, g, arrays["vjp"]),
            "file": name.replace("/", "__") + ".npz",
            "arrays": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in arrays.items()}}
    return Case(meta, arrays)


@functools.lru_cache(maxsize=4)
def build_cases(version=GOLDEN_VERSION):
    """The whole battery (a tuple of :class:`Case`), computed exactly; cached."""
    if version != GOLDEN_VERSION:
        raise ValueError(f"this refimpl generates golden version {GOLDEN_VERSION!r}, not {version!r}")
    return tuple(_complete(spec, version) for spec in SPECS)


def cases(mapping=None, patterns=None):
    """The cases of ``mapping`` (all if None) whose names match any glob in ``patterns``."""
    return [c for c in build_cases()
            if (mapping is None or c.mapping == mapping)
            and (not patterns or any(fnmatch.fnmatchcase(c.name, p) for p in patterns))]


_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def _npz_bytes(arrays):
    """A deterministic, uncompressed ``.npz``: fixed key order and timestamps."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for key, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_DATE)
            info.create_system, info.external_attr = 3, 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


MAPPING_DOC = {
    "sparsemax": "x (..., K) -> p (..., K) along axis: Euclidean projection onto the simplex",
    "topk_sparsemax": "x (..., K), k -> sparsemax of x with all but the k largest set to -inf",
    "topk_bits": "t (N, D), k -> (bits (N, k, D), p (N, k)): sparsemax over the scores <a_z, t> "
                 "of the k best bit-vectors z",
    "sparsemap_bits": "t (N, D) -> SparseMAP marginals over {0,1}^D: mu = clip(t, 0, 1)",
    "sparsemap_budget": "t (N, D), budget B -> SparseMAP marginals over {z : sum z <= B}: "
                        "projection onto {mu in [0,1]^D : sum mu <= B}",
}


def index_json(selected, version=GOLDEN_VERSION):
    """The JSON index (a string) of the cases ``selected``: one case per line."""
    head = {"format": "refimpl-golden", "golden_version": version,
            "generator": "python -m refimpl.golden", "doc": "docs/crosscheck.md#golden-files",
            "n_cotangents": N_COTANGENTS, "mappings": MAPPING_DOC}
    lines = ",\n".join("  " + json.dumps(c.meta, ensure_ascii=True) for c in selected)
    text = json.dumps(head, indent=1, ensure_ascii=True)
    return text[:-2] + ',\n "cases": [\n' + lines + "\n ]\n}\n"


def write_golden(out_dir, selected=None):
    """Write ``index.json`` and the ``.npz`` files of ``selected`` (default all) to ``out_dir``."""
    selected = list(build_cases() if selected is None else selected)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for c in selected:
        (out / c.meta["file"]).write_bytes(_npz_bytes(c.arrays))
    (out / "index.json").write_text(index_json(selected), encoding="ascii")
    return out


def read_golden(directory, mapping=None):
    """Cases stored under ``directory`` (as written by :func:`write_golden`)."""
    directory = Path(directory)
    index = json.loads((directory / "index.json").read_text(encoding="ascii"))
    out = []
    for meta in index["cases"]:
        if mapping is None or meta["mapping"] == mapping:
            with np.load(directory / meta["file"], allow_pickle=False) as z:
                out.append(Case(meta, {k: z[k] for k in z.files}))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m refimpl.golden", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory to write index.json and the .npz files")
    parser.add_argument("--cases", nargs="*", help="glob(s) over case names (default: all)")
    parser.add_argument("--mapping", choices=MAPPINGS, help="only this mapping")
    args = parser.parse_args(argv)
    selected = cases(args.mapping, args.cases)
    if not selected:
        parser.error("no case matches")
    write_golden(args.out, selected)
    print(f"wrote {len(selected)} golden cases (version {GOLDEN_VERSION}) to {args.out}")
    return 0


# --------------------------------------------------------------------------
# The battery.  Each spec: name, mapping, dtype, x (rng -> input), axis,
# params, description.  Inputs are drawn in float64 and cast to the dtype.
# --------------------------------------------------------------------------

_DT = {"f32": "float32", "f64": "float64"}
_INF = -np.inf


def _normal(shape, scale=1.0, loc=0.0):
    return lambda rng: loc + scale * rng.standard_normal(shape)


def _fixed(rows):
    return lambda rng: np.array(rows, dtype=np.float64)


def _dyadic(shape, lo, hi, denom=4096):
    """Multiples of 1/denom in [lo, hi]: every subset sum is exact in float32."""
    return lambda rng: rng.integers(int(lo * denom), int(hi * denom) + 1, size=shape) / denom


def _bitvae(shape):
    """Scores like the bit-VAE's: ``t = (x + 1)/2`` with ``x ~ N(0, 1)``."""
    return lambda rng: (rng.standard_normal(shape) + 1) / 2


def _onehot(rng):
    x = rng.standard_normal((6, 8))
    top = rng.integers(0, 8, size=6)
    x[np.arange(6), top] = x.max(axis=1) + 1 + rng.uniform(0.01, 2, size=6)
    return x


def _neginf(rng):
    x = rng.standard_normal((6, 8))
    x[rng.random((6, 8)) < 0.4] = _INF
    x[0, 1:] = _INF                                        # one finite entry
    x[1] = [0.5, _INF, 0.5, 0, _INF, -1, _INF, 0]          # ties at tau = 0 next to -inf
    x[2, :] = [_INF] * 7 + [3.0]
    return x


def _bit_scores(D, N=4):
    """Scores <a_z, t> of all 2^D bit-vectors (enumeration order) for dyadic t."""
    from .enumeration import bitvector_scores
    return lambda rng: bitvector_scores(_dyadic((N, D), -2, 2, 64)(rng))


def _huge(dtype):
    big, c = (1e30, 2.0 ** 50) if dtype == "f64" else (1e30, 2.0 ** 20)
    near = float(np.finfo(_DT[dtype]).max) * 0.75
    return {
        "huge-1e30": (_fixed([[big, big, 0, -big], [-big, -big, -2 * big, -3 * big],
                              [big, -big, big, 1.0], [big, big, big, big]]),
                      "entries of +-1e30: exact only with the max shift; without it the threshold "
                      "test 1 + k s_(k) > cumsum loses the 1, k* can be 0, and the output inf/NaN"),
        "huge-offset": (_fixed([[c + .75, c + .5, c, c - .25], [c, c + .25, c + .25, c - 1],
                                [-c + .75, -c + .5, -c, -c - .5]]),
                        f"scores 2^{int(np.log2(c))} plus small exact offsets: a cumulative sum "
                        "without the max shift rounds the offsets away"),
        "huge-near-overflow": (_fixed([[near, near, near], [near, -near, near], [-near, -near, 0]]),
                               "scores at 3/4 of the largest float: a cumsum without the shift "
                               "overflows to inf"),
    }


def _sparsemax_specs(dt):
    tie_rows = [[0.5, 0.5, 0, -1, -2, 0], [1, 0, 0, 0, -0.5, -3],
                [1.5, 1.25, 0.875, 0.875, 0.5, -1], [0.25, 0.25, 0.25, 0.25, 0, 0],
                [2, 1.75, 1.75, 1.5, 1.5, 0],
                [1000.875, 1001.5, 999, 1000.875, 1001.25, 1000.5]]
    table = {
        "random-K5": (_normal((16, 5)), "random scores, small slices"),
        "random-K10-scale0.3": (_normal((8, 10), 0.3), "random scores with large supports"),
        "random-K100": (_normal((4, 100)), "random scores, medium slices"),
        "random-K1000-scale0.1": (_normal((2, 1000), 0.1), "long slices, supports of dozens"),
        "random-scale100": (_normal((8, 10), 100.0), "large spread: mostly one-hot outputs"),
        "random-scale1e-3": (_normal((4, 50), 1e-3), "tiny spread: full support, near uniform"),
        "K1": (_fixed([[-2.5], [0.0], [1e30]]), "K = 1: output 1, VJP 0"),
        "K2": (lambda rng: np.concatenate([rng.standard_normal((4, 2)),
                                           [[0.0, 1.0], [0.25, -0.125]]]),
               "K = 2, including a gap of exactly 1 (the loser sits at the threshold)"),
        "ties-threshold": (_fixed(tie_rows), "entries exactly at the threshold tau: probability "
                           "exactly 0 and outside the support (dyadic, so exact in floats too)"),
        "all-equal": (_fixed([[v] * 7 for v in (0.0, -3.7, 1e10, 1e30, -1e30)]),
                      "all-equal slices: 1/7 each (correctly rounded), full support"),
        "onehot": (_onehot, "one score leads by more than 1: one-hot output, VJP 0"),
        "neginf": (_neginf, "-inf (masked) entries get probability 0; a slice with a single "
                   "finite entry; ties next to -inf"),
        "axis0": (_normal((7, 4), 0.5), "2-D input with axis=0 (catches a dim argument that is ignored)"),
        "batch3d-axis1": (_normal((2, 6, 3), 0.5), "3-D input, categories on the middle axis"),
    }
    table.update(_huge(dt))
    axes = {"axis0": 0, "batch3d-axis1": 1}
    return [dict(name=f"sparsemax/{dt}/{key}", mapping="sparsemax", dtype=_DT[dt], x=x,
                 axis=axes.get(key, -1), description=why) for key, (x, why) in table.items()]


def _topk_specs(dt):
    table = [("random-K10-k1", _normal((8, 10), 0.3), 1, "k = 1: always one-hot"),
             ("random-K10-k2", _normal((8, 10), 0.3), 2, "k = 2 truncates most supports"),
             ("random-K10-k5", _normal((8, 10), 0.3), 5, "k = 5"),
             ("k-equals-K", _normal((4, 5)), 5, "k = K: plain sparsemax"),
             ("k-above-K", _normal((4, 5)), 7, "k > K: plain sparsemax"),
             ("neginf", _neginf, 3, "-inf entries, and k larger than the number of finite ones"),
             ("huge-1e30", _fixed([[1e30, 1e30, 0, -1e30], [-1e30, -1e30, -2e30, -3e30],
                                   [1e30, -1e30, 1e30, 1.0]]), 2, "+-1e30 entries"),
             ("bits-D3-k2", _bit_scores(3), 2, "scores of all 2^3 bit-vectors (structured top-k)"),
             ("bits-D5-k4", _bit_scores(5), 4, "scores of all 2^5 bit-vectors"),
             ("bits-D6-k10", _bit_scores(6), 10, "scores of all 2^6 bit-vectors, k = 10")]
    return [dict(name=f"topk_sparsemax/{dt}/{key}", mapping="topk_sparsemax", dtype=_DT[dt],
                 x=x, params={"k": k}, description=why) for key, x, k, why in table]


def _structured_specs(dt):
    out = []
    for D, k, N in ((4, 1, 4), (4, 2, 4), (8, 5, 4), (16, 10, 3), (32, 10, 3)):
        out.append(dict(name=f"topk_bits/{dt}/D{D}-k{k}", mapping="topk_bits", dtype=_DT[dt],
                        x=_dyadic((N, D), -2, 2), params={"k": k},
                        description=f"top-{k} sparsemax over the 2^{D} bit-vectors; the k best "
                                    "checked against brute force (" + (
                                        "all 2^D vectors" if D <= E.BRUTE_FORCE_MAX_D else
                                        "every flip set of the k-1 smallest |t_i|") +
                                    "); scores distinct and exact in float32"))
    bits = [("D5", _normal((8, 5), 0.7, 0.5), "mixed clipped and free coordinates"),
            ("D32", _normal((4, 32), 0.7, 0.5), "D = 32"),
            ("huge", _fixed([[1e30, -1e30, 0.25, 0.75], [-1e30, 0.5, 2.0, -0.5]]),
             "huge magnitudes clip to 0 and 1")]
    bits += [(f"D{D}-bitvae", _bitvae((8, D)), f"D = {D}, scores like the bit-VAE's encoder "
              "t = (x + 1)/2, x ~ N(0, 1): about 2/3 of the coordinates free, so an active set "
              "must hold about 2D/3 + 1 vertices to span the face") for D in (64, 128)]
    out += [dict(name=f"sparsemap_bits/{dt}/{key}", mapping="sparsemap_bits", dtype=_DT[dt], x=x,
                 description=why) for key, x, why in bits]
    budget = [("D6-B2", _normal((8, 6), 0.7, 0.5), 2, "budget mostly active"),
              ("D10-B1", _normal((6, 10), 0.5, 0.3), 1, "B = 1: a sparsemax with an 'all off' option"),
              ("D16-B8", _normal((4, 16), 0.5, 0.7), 8, "B = D/2, as in the paper"),
              ("inactive", _normal((4, 8), 0.2, 0.0), 4, "budget not binding: clip(t, 0, 1)")]
    budget += [(f"D{D}-B{D // 4}-bitvae", _bitvae((8, D)), D // 4,
                f"D = {D}, bit-VAE-like scores t = (x + 1)/2 and B = D/4: the budget binds, "
                "the face is a slice of a hypersimplex of dimension |free| - 1") for D in (64, 128)]
    out += [dict(name=f"sparsemap_budget/{dt}/{key}", mapping="sparsemap_budget", dtype=_DT[dt],
                 x=x, params={"budget": B}, description=why) for key, x, B, why in budget]
    return out


SPECS = [spec for dt in ("f64", "f32")
         for spec in _sparsemax_specs(dt) + _topk_specs(dt) + _structured_specs(dt)]


if __name__ == "__main__":
    sys.exit(main())
