"""Fashion-MNIST and MNIST: find, verify and parse the official IDX files.

Each dataset is four gzip-compressed IDX files, looked for as
``<root>/<name>/<file>`` (``name`` is "fashion-mnist" or "mnist") in this order:

1. the ``data_dir`` argument (the experiments' ``--data-dir``);
2. the directory in the environment variable ``REFIMPL_DATA``;
3. the user cache, ``$XDG_CACHE_HOME/refimpl`` (default ``~/.cache/refimpl``);
4. ``/usr/share/datasets`` (the layout of Debian's ``dataset-fashion-mnist``);
5. only with ``download=True``: the official mirrors, saved into the user cache.

The first location that *has* the file is used.  Every file is checked
against the official size and SHA-256 (table :data:`FILES`; sources and
checksums in docs/data.md) before it is parsed; a file that fails is an error
that names it -- the search never falls through to a later copy, so a bad file
can't be skipped without anyone noticing.  The one exception is a corrupt file in the user cache
when ``download=True``: it is downloaded again and replaced.  A gzip file whose
*header* differs from the official one (Debian's repackaging strips the name
and resets the timestamp) is accepted when its decompressed IDX bytes match the
official SHA-256 of the uncompressed data, also in :data:`FILES`.

Parsed arrays are cached in-process (per path, size and modification time)
and returned **read-only** and shared between callers: use ``.copy()`` to modify
them.  Nothing here imports CuPy; move arrays to the GPU in the experiment.
"""
import gzip
import hashlib
import os
import stat
import sys
import tempfile
import urllib.request
import zlib
from functools import lru_cache
from http.client import HTTPException
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["DataError", "DATASETS", "SPLITS", "FILES", "MIRRORS", "cache_root", "resolve_file",
           "parse_idx", "load_images", "load_labels", "load_dataset", "data_source"]


class DataError(RuntimeError):
    """A dataset file is missing, truncated, corrupt or not valid IDX."""


class FileInfo(NamedTuple):
    """Official facts about one ``.gz`` file: size, hashes, uncompressed size and SHA-256."""
    size: int
    md5: str
    sha256: str
    raw_size: int
    raw_sha256: str


DATASETS = ("fashion-mnist", "mnist")
SPLITS = {"train": "train", "test": "t10k"}  # split -> file-name prefix
N_EXAMPLES = {"train": 60000, "test": 10000}
IMAGE_SHAPE = (28, 28)
IDX_MAGIC = {"images": 2051, "labels": 2049}  # 0x0803 (ubyte, 3 dims), 0x0801 (ubyte, 1 dim)
ENV_VAR = "REFIMPL_DATA"
SYSTEM_DATA_ROOT = Path("/usr/share/datasets")

FILES = {
    ("fashion-mnist", "train-images-idx3-ubyte.gz"): FileInfo(
        26421880, "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        47040016, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    ("fashion-mnist", "train-labels-idx1-ubyte.gz"): FileInfo(
        29515, "25c81989df183df01b3e8a0aad5dffbe",
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        60008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    ("fashion-mnist", "t10k-images-idx3-ubyte.gz"): FileInfo(
        4422102, "bef4ecab320f06d8554ea6380940ec79",
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        7840016, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    ("fashion-mnist", "t10k-labels-idx1-ubyte.gz"): FileInfo(
        5148, "bb300cfdad3c16e7a12a480ee83cd310",
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        10008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    ("mnist", "train-images-idx3-ubyte.gz"): FileInfo(
        9912422, "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        47040016, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    ("mnist", "train-labels-idx1-ubyte.gz"): FileInfo(
        28881, "d53e105ee54ea40749a09fcbcd1e9432",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        60008, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    ("mnist", "t10k-images-idx3-ubyte.gz"): FileInfo(
        1648877, "9fb629c4189551a2d022fa330f9573f3",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        7840016, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    ("mnist", "t10k-labels-idx1-ubyte.gz"): FileInfo(
        4542, "ec29112dd5afa0611ce80d1b7f02629c",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        10008, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}

MIRRORS = {
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"),
}

MISSING = "missing"
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# --------------------------------------------------------------------------- names

def _check_name(name):
    """Raise ValueError unless ``name`` is a known dataset."""
    if name not in DATASETS:
        raise ValueError(f"dataset name must be one of {', '.join(DATASETS)}; got {name!r}")


def _check_split(split):
    """Raise ValueError unless ``split`` is "train" or "test"."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")


def file_name(kind, split):
    """The official file name of ``kind`` ("images"/"labels") for ``split``."""
    _check_split(split)
    ndim = {"images": 3, "labels": 1}[kind]
    return f"{SPLITS[split]}-{kind}-idx{ndim}-ubyte.gz"


def _file_info(name, filename):
    """The :class:`FileInfo` of ``name/filename``; ValueError for unknown files."""
    _check_name(name)
    try:
        return FILES[(name, filename)]
    except KeyError:
        known = sorted(f for n, f in FILES if n == name)
        raise ValueError(f"unknown file {filename!r} for dataset {name!r}; "
                         f"known files: {', '.join(known)}") from None


# --------------------------------------------------------------------------- where to look

def cache_root():
    """The user cache for datasets: ``$XDG_CACHE_HOME/refimpl`` or ``~/.cache/refimpl``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # XDG: relative is ignored
    return base / "refimpl"


def _search_roots(data_dir):
    """``[(label, root or None), ...]`` in search order; root None means "not set"."""
    env = os.environ.get(ENV_VAR, "")
    roots = [("$" + ENV_VAR, Path(env).expanduser() if env else None),
             ("user cache", cache_root()),
             ("system datasets (Debian dataset-fashion-mnist layout)", SYSTEM_DATA_ROOT)]
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise DataError(f"data_dir (--data-dir) {str(root)!r} is not a directory: pass the folder "
                            f"that holds {'/, '.join(DATASETS)}/ (see docs/data.md)")
        roots.insert(0, ("--data-dir", root))
    return roots


# --------------------------------------------------------------------------- verification

def _content_matches(data, info):
    """True when ``data`` decompresses to the official uncompressed IDX bytes."""
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError, ValueError, zlib.error):  # bad gzip/deflate, truncated, bad CRC
        return False
    return len(raw) == info.raw_size and hashlib.sha256(raw).hexdigest() == info.raw_sha256


def _check_bytes(data, info):
    """``None`` when ``data`` is the official file (or the same IDX data re-gzipped), else what is wrong."""
    if len(data) == info.size and hashlib.sha256(data).hexdigest() == info.sha256:
        return None
    if _content_matches(data, info):
        return None
    if len(data) != info.size:
        return (f"wrong size ({len(data)} bytes, expected {info.size}: truncated, "
                "or not the official file)")
    return f"wrong checksum (sha256 {hashlib.sha256(data).hexdigest()[:16]}..., expected {info.sha256})"


@lru_cache(maxsize=64)
def _verify_cached(path, size, mtime_ns, ctime_ns, inode, info):
    """:func:`_check_bytes` of the file at ``path``; the other arguments key the cache."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    return _check_bytes(data, info)


def _verify(path, info):
    """``None`` if ``path`` holds the official file, else "missing" or what is wrong.

    Results are cached per (path, size, mtime, ctime, inode), so checking an
    unchanged file again costs one ``stat``.
    """
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return MISSING
    except OSError as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return _verify_cached(str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, info)


# --------------------------------------------------------------------------- messages

def _fix_hint(name):
    """How to make the files available (the tail of every DataError)."""
    return ("To fix: put the official files under DIR/" + name + "/ and pass --data-dir DIR "
            f"(or set {ENV_VAR}=DIR), or allow download (the experiments download by default; "
            f"downloads go to {cache_root() / name}). Expected sizes and checksums: "
            "docs/data.md or experiments.data.FILES.")


def _missing_message(name, filename, looked, download):
    """The DataError text when no location has the file."""
    lines = [f"dataset file {name}/{filename} not found. Looked in:"]
    lines += [f"  {i}. {entry}" for i, entry in enumerate(looked, 1)]
    if not download:
        lines.append(f"  {len(looked) + 1}. download: not allowed (download=False)")
    lines.append(_fix_hint(name))
    return "\n".join(lines)


def _corrupt_message(name, filename, path, problem, looked, cached):
    """The DataError text when the first location that has the file holds a bad copy."""
    lines = [f"dataset file {path} is corrupt: {problem}.",
             "It is the first location in the search order that has the file, so it is not "
             "skipped in favour of a later one. Looked in:"]
    lines += [f"  {i}. {entry}" for i, entry in enumerate(looked, 1)]
    if cached:
        lines.append(f"To fix: delete the corrupt cached file {path}, or allow download "
                     "(download=True) to replace it.")
    else:
        lines.append(f"To fix: delete or replace {path} with the official file "
                     f"(sha256 {FILES[(name, filename)].sha256}), or point --data-dir / "
                     f"{ENV_VAR} at a folder with good copies.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- download

def _download(url, dest):
    """Fetch ``url`` into the file ``dest`` (no checks; the caller verifies)."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)


def _fetch_verified(url, dest, info):
    """Download ``url`` to a temp file beside ``dest``, verify, rename; ``None`` or the problem."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    try:
        print(f"downloading {url} -> {dest}", file=sys.stderr)
        _download(url, tmp)
        problem = _check_bytes(Path(tmp).read_bytes(), info)
        if problem is None:
            os.replace(tmp, dest)
        return problem
    except (OSError, HTTPException, ValueError) as exc:
        return f"download failed ({type(exc).__name__}: {exc})"
    finally:
        Path(tmp).unlink(missing_ok=True)


def _download_into_cache(name, filename, info, looked):
    """Fetch ``name/filename`` from the mirrors into the user cache; return its path."""
    dest = cache_root() / name / filename
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the dataset cache {dest.parent} ({exc}); "
                        f"set XDG_CACHE_HOME, or pass --data-dir / {ENV_VAR}") from exc
    for base in MIRRORS[name]:
        problem = _fetch_verified(base + filename, dest, info)
        if problem is None:
            return dest
        looked.append(f"download {base + filename}: {problem}")
    raise DataError(_missing_message(name, filename, looked, download=True))


# --------------------------------------------------------------------------- public: find

def resolve_file(name, filename, data_dir=None, download=False):
    """Path of the verified file ``name/filename`` (see the module docstring for the order).

    Raises ``DataError`` when no location has it (listing every place looked
    at) or when the first copy found is corrupt (naming it), and ``ValueError``
    for an unknown dataset or file name.  Downloads only when ``download=True``.
    """
    info = _file_info(name, filename)
    looked = []
    for label, root in _search_roots(data_dir):
        if root is None:
            looked.append(f"{label}: not set")
            continue
        path = root / name / filename
        problem = _verify(path, info)
        if problem is None:
            return path
        looked.append(f"{label}: {path}: {problem}")
        if problem == MISSING:
            continue
        if label == "user cache" and download:
            return _download_into_cache(name, filename, info, looked)
        raise DataError(_corrupt_message(name, filename, path, problem, looked,
                                         cached=label == "user cache"))
    if download:
        return _download_into_cache(name, filename, info, looked)
    raise DataError(_missing_message(name, filename, looked, download=False))


# --------------------------------------------------------------------------- parse

def parse_idx(raw, source="<bytes>"):
    """Parse uncompressed IDX bytes into a read-only array of shape ``dims`` from the header.

    Header: two zero bytes, a dtype code (0x08 ubyte ... 0x0E float64), the
    number of dimensions, then one big-endian uint32 per dimension.  Raises
    ``DataError`` naming ``source`` if the header or the length is wrong.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{source}: not an IDX file (bad magic number {raw[:4].hex()!r})")
    ndim, dtype = raw[3], np.dtype(_IDX_DTYPES[raw[2]])
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{source}: IDX header truncated ({len(raw)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{source}: IDX dims {dims} need {expected} bytes, file has {len(raw)}")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="),
                                                                          copy=False)


def _magic(raw):
    """The IDX magic number (first 4 bytes, big-endian) of ``raw``."""
    return int.from_bytes(raw[:4], "big")


@lru_cache(maxsize=8)
def _load_cached(path, size, mtime_ns, kind, info):
    """Decompress, re-check and parse the IDX file at ``path``; read-only array."""
    try:
        raw = gzip.decompress(Path(path).read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot decompress ({exc}); delete it and retry") from exc
    if hashlib.sha256(raw).hexdigest() != info.raw_sha256:
        raise DataError(f"{path} changed after it was verified; reload, or replace it with the official file")
    if _magic(raw) != IDX_MAGIC[kind]:
        raise DataError(f"{path}: IDX magic {_magic(raw)}, expected {IDX_MAGIC[kind]} for {kind}")
    array = parse_idx(raw, path)
    array.flags.writeable = False
    return array


def _load(name, kind, split, data_dir, download):
    """Resolve and parse one file, then check its shape against the known split size."""
    _check_name(name)
    filename = file_name(kind, split)
    path = resolve_file(name, filename, data_dir=data_dir, download=download)
    st = path.stat()
    array = _load_cached(str(path), st.st_size, st.st_mtime_ns, kind, FILES[(name, filename)])
    shape = (N_EXAMPLES[split],) + (IMAGE_SHAPE if kind == "images" else ())
    if array.shape != shape or array.dtype != np.uint8:
        raise DataError(f"{path}: {kind} of shape {array.shape} {array.dtype}, expected {shape} uint8")
    return array


# --------------------------------------------------------------------------- public: load

def load_images(name, split, data_dir=None, download=False):
    """Images of ``name`` ("fashion-mnist"/"mnist"), ``split`` ("train"/"test").

    Returns a read-only, shared ``uint8`` array of shape ``(N, 28, 28)``
    (N = 60000 train, 10000 test); ``.copy()`` it before modifying.
    """
    return _load(name, "images", split, data_dir, download)


def load_labels(name, split, data_dir=None, download=False):
    """Labels 0..9 of ``name``/``split``: read-only, shared ``uint8`` array of shape ``(N,)``."""
    return _load(name, "labels", split, data_dir, download)


def load_dataset(name, data_dir=None, download=False):
    """All four arrays of ``name``: ``dict(train_images (60000, 28, 28), train_labels (60000,),
    test_images (10000, 28, 28), test_labels (10000,))``, all read-only ``uint8``."""
    out = {}
    for split in SPLITS:
        out[f"{split}_images"] = load_images(name, split, data_dir, download)
        out[f"{split}_labels"] = load_labels(name, split, data_dir, download)
    return out


# --------------------------------------------------------------------------- public: provenance

def data_source(name, kinds=("images", "labels"), data_dir=None):
    """Where ``name``'s files were found and their verified SHA-256 (for ``config.json``):
    ``dict(dataset, dir, sha256={file name: checksum})``.  Call after loading: each file
    is resolved again (a cached check) and its official checksum recorded."""
    files = {}
    for kind in kinds:
        for split in SPLITS:
            filename = file_name(kind, split)
            files[filename] = resolve_file(name, filename, data_dir=data_dir, download=False)
    dirs = sorted({str(p.parent.resolve()) for p in files.values()})
    return {"dataset": name, "dir": dirs[0] if len(dirs) == 1 else dirs,
            "sha256": {f: FILES[(name, f)].sha256 for f in files}}
