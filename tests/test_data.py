"""experiments.data: verified IDX loading, search order, and clear errors.

The loader tests run on small generated IDX label files whose checksums are
put in ``data.FILES`` for the test (the ``generated`` fixture), so they need
no dataset.  The tests of the published facts use the real files (the
``data_dir`` fixture: ``REFIMPL_DATA``) and skip, saying so, without them.
Nothing here touches the network: the autouse fixture makes any download
fail the test.
"""
import gzip
import hashlib
import io
import re
from pathlib import Path
import urllib.request

import numpy as np
import pytest

from experiments import data
from experiments.data import DataError

NAME = "fashion-mnist"
SMALL = "t10k-labels-idx1-ubyte.gz"  # 5 kB: cheap to copy around


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail the test if anything tries to download."""
    def fail(*args, **kwargs):
        pytest.fail(f"tried to download: {args}")
    monkeypatch.setattr(data, "_download", fail)
    monkeypatch.setattr(urllib.request, "urlopen", fail)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No REFIMPL_DATA, cache and system roots inside tmp_path; returns tmp_path."""
    monkeypatch.delenv("REFIMPL_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(data, "SYSTEM_DATA_ROOT", tmp_path / "system")
    return tmp_path


def _gzip_idx_labels(labels, filename):
    """The bytes of a gzip file (with FNAME and a fixed MTIME, as the official ones) of IDX labels."""
    raw = bytes([0, 0, 8, 1]) + len(labels).to_bytes(4, "big") + bytes(labels)
    buf = io.BytesIO()
    with gzip.GzipFile(filename=filename[:-3], mode="wb", fileobj=buf, mtime=0x59A7E9F3) as f:
        f.write(raw)
    return buf.getvalue(), raw


@pytest.fixture
def generated(tmp_path, monkeypatch):
    """A data root with generated Fashion-MNIST label files; ``data.FILES`` gets their facts."""
    root = tmp_path / "generated"
    rng = np.random.default_rng(0)
    for split, n in (("test", 10000), ("train", 60000)):
        filename = data.file_name("labels", split)
        gz, raw = _gzip_idx_labels(rng.integers(0, 10, n, dtype=np.uint8).tolist(), filename)
        info = data.FileInfo(len(gz), hashlib.md5(gz).hexdigest(), hashlib.sha256(gz).hexdigest(),
                             len(raw), hashlib.sha256(raw).hexdigest())
        monkeypatch.setitem(data.FILES, (NAME, filename), info)
        _place(root, gz, filename=filename)
    return root


def _place(root, content, name=NAME, filename=SMALL):
    """Write ``content`` to ``root/name/filename``; return its path."""
    path = root / name / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _official(data_dir, name=NAME, filename=SMALL):
    return (data_dir / name / filename).read_bytes()


def _pixel_stats(images):
    """(mean, std) of images/255 via the 256-bin histogram (exact, little memory)."""
    hist = np.bincount(images.ravel(), minlength=256).astype(np.float64)
    v = np.arange(256) / 255.0
    mean = (hist * v).sum() / hist.sum()
    return mean, np.sqrt((hist * v * v).sum() / hist.sum() - mean ** 2)


# --------------------------------------------------------------------------- table and content

def test_table_matches_docs_data_md():
    """docs/data.md lists the same sizes and checksums as the loader checks."""
    doc = Path(__file__).resolve().parents[1] / "docs" / "data.md"
    rows = re.findall(r"^\| `([\w-]+)/(\S+\.gz)` \| ([\d,]+) \| `([0-9a-f]{32})` \| `([0-9a-f]{64})` \|",
                      doc.read_text(encoding="utf-8"), flags=re.M)
    assert len(rows) == 8
    for name, filename, size, md5, sha in rows:
        info = data.FILES[(name, filename)]
        assert (info.size, info.md5, info.sha256) == (int(size.replace(",", "")), md5, sha)


def test_fashion_mnist_matches_published_facts(data_dir):
    d = data.load_dataset(NAME, data_dir=data_dir)
    assert d["train_images"].shape == (60000, 28, 28) and d["test_images"].shape == (10000, 28, 28)
    assert d["train_labels"].shape == (60000,) and d["test_labels"].shape == (10000,)
    assert all(a.dtype == np.uint8 for a in d.values())
    assert np.bincount(d["train_labels"]).tolist() == [6000] * 10
    assert np.bincount(d["test_labels"]).tolist() == [1000] * 10
    mean, std = _pixel_stats(d["train_images"])
    assert round(mean, 4) == 0.2860 and round(std, 4) == 0.3530


def test_mnist_matches_published_facts(data_dir):
    d = data.load_dataset("mnist", data_dir=data_dir)
    assert np.bincount(d["train_labels"]).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(d["test_labels"]).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    mean, std = _pixel_stats(d["train_images"])
    assert round(mean, 4) == 0.1307 and round(std, 4) == 0.3081


def test_arrays_are_read_only_and_cached(generated):
    a = data.load_labels(NAME, "test", data_dir=generated)
    assert data.load_labels(NAME, "test", data_dir=generated) is a
    with pytest.raises(ValueError):
        a[0] = 1
    assert a.copy().flags.writeable


def test_generated_images_file_loads_with_its_shape_and_values(tmp_path, monkeypatch):
    """A generated IDX image file (the official layout and count) parses to the pixels written."""
    n = data.N_EXAMPLES["test"]
    pixels = (np.arange(n)[:, None, None] + np.arange(28)[None, :, None] * 3
              + np.arange(28)[None, None, :]) % 256
    raw = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28)) \
        + pixels.astype(np.uint8).tobytes()
    filename = data.file_name("images", "test")
    buf = io.BytesIO()
    with gzip.GzipFile(filename=filename[:-3], mode="wb", fileobj=buf, mtime=0) as f:
        f.write(raw)
    gz = buf.getvalue()
    monkeypatch.setitem(data.FILES, (NAME, filename), data.FileInfo(
        len(gz), hashlib.md5(gz).hexdigest(), hashlib.sha256(gz).hexdigest(),
        len(raw), hashlib.sha256(raw).hexdigest()))
    _place(tmp_path, gz, filename=filename)
    images = data.load_images(NAME, "test", data_dir=tmp_path)
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8 and not images.flags.writeable
    assert np.array_equal(images, pixels)


def test_env_var_is_used_without_data_dir(generated, monkeypatch):
    monkeypatch.setenv("REFIMPL_DATA", str(generated))
    assert data.resolve_file(NAME, SMALL) == generated / NAME / SMALL


def test_verification_is_cached(generated):
    data.resolve_file(NAME, SMALL, data_dir=generated)
    hits = data._verify_cached.cache_info().hits
    data.resolve_file(NAME, SMALL, data_dir=generated)
    assert data._verify_cached.cache_info().hits == hits + 1


def test_unknown_names_raise_value_error(generated):
    with pytest.raises(ValueError, match="dataset name must be one of"):
        data.load_images("cifar10", "train", data_dir=generated)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        data.load_labels(NAME, "valid", data_dir=generated)
    with pytest.raises(ValueError, match="unknown file"):
        data.resolve_file(NAME, "other.gz", data_dir=generated)


# --------------------------------------------------------------------------- search order

def test_search_order(generated, isolated, monkeypatch):
    good = _official(generated)
    explicit = _place(isolated / "explicit", good)
    env = _place(isolated / "env", good)
    xdg = _place(isolated / "xdg" / "refimpl", good)
    home = _place(isolated / "home" / ".cache" / "refimpl", good)
    system = _place(isolated / "system", good)
    monkeypatch.setenv("REFIMPL_DATA", str(isolated / "env"))
    assert data.resolve_file(NAME, SMALL, data_dir=isolated / "explicit") == explicit
    assert data.resolve_file(NAME, SMALL) == env
    monkeypatch.delenv("REFIMPL_DATA")
    assert data.resolve_file(NAME, SMALL) == xdg
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.resolve_file(NAME, SMALL) == home
    home.unlink()
    assert data.resolve_file(NAME, SMALL) == system


def test_missing_file_lists_every_place(isolated, monkeypatch):
    (isolated / "explicit").mkdir()
    (isolated / "env").mkdir()
    monkeypatch.setenv("REFIMPL_DATA", str(isolated / "env"))
    with pytest.raises(DataError) as err:
        data.load_labels(NAME, "test", data_dir=isolated / "explicit")
    msg = str(err.value)
    for root in ("explicit", "env", "xdg/refimpl", "system"):
        assert f"{isolated / root / NAME / SMALL}: missing" in msg
    assert "download: not allowed" in msg
    assert "--data-dir" in msg and "REFIMPL_DATA" in msg and "allow download" in msg


def test_unset_env_var_is_reported(isolated):
    with pytest.raises(DataError, match=r"\$REFIMPL_DATA: not set"):
        data.resolve_file(NAME, SMALL)


def test_nonexistent_data_dir_is_an_error(isolated):
    with pytest.raises(DataError, match="is not a directory"):
        data.resolve_file(NAME, SMALL, data_dir=isolated / "typo")


# --------------------------------------------------------------------------- bad copies

def test_truncated_copy_is_an_error_naming_it(generated, isolated, monkeypatch):
    good = _official(generated)
    bad = _place(isolated / "explicit", good[: len(good) // 2])
    monkeypatch.setenv("REFIMPL_DATA", str(generated))  # a good copy later in the order is not used
    with pytest.raises(DataError) as err:
        data.load_labels(NAME, "test", data_dir=isolated / "explicit")
    msg = str(err.value)
    assert str(bad) in msg and "wrong size" in msg and f"expected {len(good)}" in msg
    assert "delete or replace" in msg and "--data-dir" in msg and "REFIMPL_DATA" in msg


def test_corrupted_copy_is_an_error_naming_it(generated, isolated):
    good = bytearray(_official(generated, filename="train-labels-idx1-ubyte.gz"))
    good[len(good) // 2] ^= 0xFF
    bad = _place(isolated / "env", bytes(good), filename="train-labels-idx1-ubyte.gz")
    with pytest.raises(DataError) as err:
        data.load_labels(NAME, "train", data_dir=isolated / "env")
    msg = str(err.value)
    assert str(bad) in msg and "wrong checksum" in msg and "delete or replace" in msg


def test_corrupt_cache_is_not_reused(generated, isolated):
    bad = _place(isolated / "xdg" / "refimpl", b"not a gzip file")
    with pytest.raises(DataError) as err:
        data.resolve_file(NAME, SMALL)
    msg = str(err.value)
    assert str(bad) in msg and "delete the corrupt cached file" in msg and "allow download" in msg


def test_repackaged_gzip_header_is_accepted(generated, isolated):
    """Debian strips the gzip file name and resets MTIME; the IDX data is unchanged."""
    official = _official(generated)
    assert official[3] == 0x08  # FLG.FNAME: a zero-terminated name follows the 10-byte header
    body = official[official.index(b"\0", 10) + 1:]
    repacked = official[:3] + b"\x00" + b"\x12\x34\x56\x78" + official[8:10] + body
    path = _place(isolated / "system", repacked)
    assert gzip.decompress(repacked) == gzip.decompress(official)
    assert data.resolve_file(NAME, SMALL) == path
    labels = data.load_labels(NAME, "test")
    assert np.array_equal(labels, data.load_labels(NAME, "test", data_dir=generated))


# --------------------------------------------------------------------------- download (faked)

def _fake_download(content, urls):
    def fake(url, dest):
        urls.append(url)
        with open(dest, "wb") as f:
            f.write(content)
    return fake


def test_download_goes_to_cache_atomically(generated, isolated, monkeypatch):
    urls = []
    monkeypatch.setattr(data, "_download", _fake_download(_official(generated), urls))
    path = data.resolve_file(NAME, SMALL, download=True)
    assert path == isolated / "xdg" / "refimpl" / NAME / SMALL
    assert path.read_bytes() == _official(generated)
    assert urls == [data.MIRRORS[NAME][0] + SMALL]
    assert [p.name for p in path.parent.iterdir()] == [SMALL]  # no temp file left


def test_corrupt_cache_is_replaced_when_download_allowed(generated, isolated, monkeypatch):
    bad = _place(isolated / "xdg" / "refimpl", b"corrupt")
    monkeypatch.setattr(data, "_download", _fake_download(_official(generated), []))
    assert data.resolve_file(NAME, SMALL, download=True) == bad
    assert bad.read_bytes() == _official(generated)


def test_bad_download_is_rejected(isolated, monkeypatch):
    urls = []
    monkeypatch.setattr(data, "_download", _fake_download(b"<html>error</html>", urls))
    with pytest.raises(DataError) as err:
        data.resolve_file("mnist", SMALL, download=True)
    assert len(urls) == len(data.MIRRORS["mnist"]) == 2
    assert all(f"download {u}: wrong size" in str(err.value) for u in urls)
    cache = isolated / "xdg" / "refimpl" / "mnist"
    assert list(cache.iterdir()) == []  # neither the bad file nor a temp file is kept


# --------------------------------------------------------------------------- IDX parsing

def _idx(code, dims, payload):
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims) + payload


def test_parse_idx_reads_header_and_big_endian_data():
    a = data.parse_idx(_idx(0x0C, (2, 2), np.arange(4, dtype=">i4").tobytes()))
    assert a.shape == (2, 2) and a.dtype == np.int32 and a.tolist() == [[0, 1], [2, 3]]
    b = data.parse_idx(_idx(0x08, (3,), b"\x01\x02\x03"))
    assert b.dtype == np.uint8 and b.tolist() == [1, 2, 3]


@pytest.mark.parametrize("raw, match", [
    (b"\x01\x00\x08\x01", "bad magic"),
    (b"\x00\x00\x07\x01", "bad magic"),
    (bytes([0, 0, 8, 3, 0, 0]), "header truncated"),
    (_idx(0x08, (2, 3), b"\x00" * 5), "need 18 bytes, file has 17"),
])
def test_parse_idx_rejects_bad_input(raw, match):
    with pytest.raises(DataError, match=match):
        data.parse_idx(raw, "x.idx")
