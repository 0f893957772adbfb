"""Image features and games for the signal game (paper §5.2): a seeded synthetic stand-in
for the authors' ImageNet VGG features, a loader for real features, and game sampling.

Synthetic features (the default; docs/signal_game_data.md says why these numbers)
-------------------------------------------------------------------------------
The authors' data: 463 concepts x 100 images, each a 4,096-d VGG-19 fc7 vector, L2-normalised.
We keep that structure.  With every component drawn i.i.d. N(0, 1/F) (so each has norm ~1)::

    x_raw(image i of concept c) = SHARED * g + mu_c + VARIATION * (sqrt(1 - rho) e_i + sqrt(rho) U v_i)
    x = x_raw / ||x_raw||

* ``g``: one vector shared by all images (fc7 features are ReLU outputs, so any two images
  are positively correlated); ``SHARED = 0.5``.
* ``mu_c``: the concept prototype.
* ``e_i``: isotropic within-concept variation; ``U v_i``: variation along ``r = 32`` nuisance
  directions shared by all concepts (``U`` (F, r) orthonormal-ish, ``v_i ~ N(0, I_r)`` scaled to
  norm ~1) -- the pose/background/colour factors that make images of one concept differ in
  the same ways across concepts; ``rho = 0.5`` of the variance is in them.
* ``VARIATION = 1.0`` (``--variation``): the within-concept part has the prototype's size.  Then
  the cosine between two images of one concept is ~0.56 and of different concepts ~0.11 (+
  nuisance overlap); see the doc for the calibration runs.

All randomness comes from ``numpy.random.default_rng(seed)``, in a fixed order, in float32
chunks, so a seed gives the same features on every machine.

Real features: :func:`load_features_npz` reads ``features (N, F)`` and ``concepts (N,)``
(any integer or string labels) from an ``.npz`` and L2-normalises the rows as the authors.

Games (:func:`sample_games`): the receiver's ``game_size`` candidates come from distinct
concepts (one random image each, as the authors' loader with ``same=0``); the target is a
uniformly random one of them; the sender sees the target's features only.
"""
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["SYNTHETIC_DEFAULTS", "FeatureSet", "make_synthetic_features", "load_features_npz",
           "sample_games", "fixed_games", "VALIDATION_SEED", "TEST_SEED"]

SYNTHETIC_DEFAULTS = {"n_concepts": 463, "per_concept": 100, "dim": 4096, "shared": 0.5,
                      "variation": 1.0, "nuisance_rank": 32, "nuisance_fraction": 0.5}
VALIDATION_SEED = 20200724     # the authors' validation / test loader seeds
TEST_SEED = 20200725
_CHUNK = 4096                  # images generated per chunk (bounds temporary memory)


class FeatureSet(NamedTuple):
    """L2-normalised ``features`` (N, F) float32, ``concepts`` (N,) int64 in [0, C), and the
    grouping used to sample games: ``order`` (N,) image indices sorted by concept, ``start``
    (C,) and ``count`` (C,) the slice of ``order`` holding each concept's images."""
    features: np.ndarray
    concepts: np.ndarray
    order: np.ndarray
    start: np.ndarray
    count: np.ndarray

    @property
    def n_concepts(self):
        return int(self.count.shape[0])


def _group(features, concepts):
    """A :class:`FeatureSet` from normalised features and concept ids 0..C-1 (all present)."""
    order = np.argsort(concepts, kind="stable")
    count = np.bincount(concepts)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    return FeatureSet(features, concepts.astype(np.int64), order, start, count)


def _normalise(x, where):
    """Rows of ``x`` divided by their L2 norm; a zero or non-finite row is an error."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    bad = ~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0)
    if bad.any():
        raise ValueError(f"{where}: {int(bad.sum())} feature rows are zero or not finite "
                         f"(first: row {int(np.nonzero(bad)[0][0])})")
    return (x / norms).astype(np.float32)


def make_synthetic_features(seed=0, n_concepts=463, per_concept=100, dim=4096, shared=0.5,
                            variation=1.0, nuisance_rank=32, nuisance_fraction=0.5):
    """The seeded synthetic stand-in (module docstring): a :class:`FeatureSet` of
    ``n_concepts * per_concept`` images of ``dim`` features, images of concept c at rows
    ``c * per_concept ... (c + 1) * per_concept - 1``."""
    if n_concepts < 2 or per_concept < 1 or dim < 1 or nuisance_rank < 1:
        raise ValueError("make_synthetic_features: need n_concepts >= 2, per_concept >= 1, "
                         "dim >= 1, nuisance_rank >= 1")
    if not (0.0 <= nuisance_fraction <= 1.0 and variation >= 0 and shared >= 0):
        raise ValueError("make_synthetic_features: need 0 <= nuisance_fraction <= 1, "
                         "variation >= 0, shared >= 0")
    rng = np.random.default_rng(seed)
    scale = np.float32(1.0 / np.sqrt(dim))
    g = rng.standard_normal(dim, dtype=np.float32) * scale
    protos = rng.standard_normal((n_concepts, dim), dtype=np.float32) * scale
    basis = rng.standard_normal((nuisance_rank, dim), dtype=np.float32) * scale  # rows ~ unit, ~orthogonal
    n = n_concepts * per_concept
    concepts = np.repeat(np.arange(n_concepts), per_concept)
    out = np.empty((n, dim), dtype=np.float32)
    a = np.float32(variation * np.sqrt(1.0 - nuisance_fraction))
    b = np.float32(variation * np.sqrt(nuisance_fraction / nuisance_rank))
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        iso = rng.standard_normal((hi - lo, dim), dtype=np.float32) * scale
        v = rng.standard_normal((hi - lo, nuisance_rank), dtype=np.float32)
        out[lo:hi] = np.float32(shared) * g + protos[concepts[lo:hi]] + a * iso + b * (v @ basis)
    return _group(_normalise(out, "make_synthetic_features"), concepts)


def load_features_npz(path):
    """Real features from ``path`` (.npz with ``features (N, F)`` and ``concepts (N,)``).

    Concept labels may be any integers or strings; they are renumbered 0..C-1 in sorted
    order.  Rows are L2-normalised (the authors normalise the VGG features the same way).
    Raises ``ValueError`` naming what is wrong.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = {"features", "concepts"} - set(npz.files)
            if missing:
                raise ValueError(f"{path}: missing array(s) {sorted(missing)}; it has {npz.files}")
            features, concepts = np.asarray(npz["features"]), np.asarray(npz["concepts"])
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc
    if features.ndim != 2 or features.dtype.kind not in "fiu":
        raise ValueError(f"{path}: features must be a numeric (N, F) array, got "
                         f"{features.dtype} {features.shape}")
    if concepts.ndim != 1 or len(concepts) != len(features):
        raise ValueError(f"{path}: concepts must have shape ({len(features)},), got {concepts.shape}")
    _, ids = np.unique(concepts, return_inverse=True)
    return _group(_normalise(features.astype(np.float64), str(path)), ids.reshape(-1))


def sample_games(data, n_games, game_size, rng):
    """``n_games`` games: ``images`` (n, game_size) int64 (image indices, distinct concepts
    within a game, one uniformly random image per concept) and ``target`` (n,) int64, the
    position of the target among the candidates (uniform).  Vectorised (no loop over games).
    """
    if game_size > data.n_concepts:
        raise ValueError(f"a game of {game_size} candidates from distinct concepts needs at "
                         f"least {game_size} concepts; the features have {data.n_concepts}")
    keys = rng.random((n_games, data.n_concepts))
    concepts = np.argpartition(keys, game_size - 1, axis=1)[:, :game_size]   # distinct, random
    u = rng.random((n_games, game_size))
    offset = np.minimum((u * data.count[concepts]).astype(np.int64), data.count[concepts] - 1)
    images = data.order[data.start[concepts] + offset]
    target = rng.integers(0, game_size, size=n_games)
    return images.astype(np.int64), target.astype(np.int64)


def fixed_games(data, n_games, game_size, seed):
    """The fixed evaluation games of ``seed`` (validation: :data:`VALIDATION_SEED`, test:
    :data:`TEST_SEED`): the same games for every run and method on the same features."""
    return sample_games(data, n_games, game_size, np.random.default_rng(seed))
