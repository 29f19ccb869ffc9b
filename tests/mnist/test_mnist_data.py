"""IDX parsing (gz and raw), every error naming its file, checksums, download mirrors, directory order."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
from mnist_helpers import make_idx_set, real_mnist_dir

from focus_optim.mnist import data as D
from focus_optim.mnist.data import FILES, MnistDataError, load_mnist, parse_idx, read_idx, write_idx


def _md5s(directory: Path) -> dict[str, str]:
    return {k: read_idx(D.find_file(directory, s))[1] for k, s in FILES.items()}


def _patch_specs(monkeypatch: pytest.MonkeyPatch, directory: Path, *, md5: bool = True) -> None:
    """Make the fixture set 'the original': its counts (and, if ``md5``, its checksums) become FILES'."""
    sums = _md5s(directory)
    specs = {}
    for key, spec in FILES.items():
        arr, _ = read_idx(D.find_file(directory, spec))
        specs[key] = D.FileSpec(spec.name, spec.kind, len(arr), sums[key] if md5 else spec.md5)
    monkeypatch.setattr(D, "FILES", specs)


# --- parsing ---------------------------------------------------------------------------------------
def test_idx_round_trip_gz_and_raw(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    raw = write_idx(tmp_path / "a-idx3-ubyte", arr)
    gz = write_idx(tmp_path / "a-idx3-ubyte.gz", arr)
    assert gz.read_bytes()[:2] == b"\x1f\x8b" and raw.read_bytes()[:4] == b"\x00\x00\x08\x03"
    (a1, m1), (a2, m2) = read_idx(raw), read_idx(gz)
    np.testing.assert_array_equal(a1, arr)
    np.testing.assert_array_equal(a2, arr)
    assert m1 == m2 == hashlib.md5(raw.read_bytes()).hexdigest()  # md5 of the decompressed content
    a1[0, 0, 0] = 1  # writable


def test_parse_idx_header_by_hand() -> None:
    payload = bytes(range(6))
    arr = parse_idx(b"\x00\x00\x08\x02" + struct.pack(">II", 2, 3) + payload)
    np.testing.assert_array_equal(arr, np.arange(6, dtype=np.uint8).reshape(2, 3))
    big = parse_idx(b"\x00\x00\x0c\x01" + struct.pack(">I", 2) + struct.pack(">ii", 1, -2))
    assert big.dtype == np.dtype("int32") and big.tolist() == [1, -2]


def test_raw_files_are_found_without_gz(tmp_path: Path) -> None:
    d = make_idx_set(tmp_path / "raw", gz=False)
    data = load_mnist(d, verify=False, download=False)
    assert data.train_images.shape == (96, 28, 28) and data.test_labels.shape == (48,)
    assert not data.verified and data.data_id.startswith("unverified:96/48:")


@pytest.mark.skipif(real_mnist_dir() is None, reason="../shared/data/mnist not present")
def test_real_mnist_verified() -> None:
    data = load_mnist(real_mnist_dir(), download=False)
    assert data.verified and data.data_id == "mnist"
    assert data.train_images.shape == (60000, 28, 28) and data.test_images.shape == (10000, 28, 28)
    assert data.train_images.dtype == np.uint8 and int(data.train_images.max()) == 255
    counts = np.bincount(data.train_labels, minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # data README


def test_checksums_verified_and_mismatch_named(monkeypatch: pytest.MonkeyPatch, idx_dir: Path) -> None:
    _patch_specs(monkeypatch, idx_dir)
    data = load_mnist(idx_dir, download=False)
    assert data.verified and data.data_id == "mnist"
    # same counts, different content -> checksum mismatch naming the file
    target = idx_dir / "t10k-labels-idx1-ubyte.gz"
    labels, _ = read_idx(target)
    write_idx(target, (labels + 1) % 10)
    with pytest.raises(MnistDataError, match=r"t10k-labels-idx1-ubyte\.gz: checksum mismatch"):
        load_mnist(idx_dir, download=False)
    assert load_mnist(idx_dir, verify=False, download=False).verified is False


# --- every error names the file ------------------------------------------------------------------
def _corrupt(path: Path, how: str) -> None:
    raw = gzip.decompress(path.read_bytes())
    if how == "truncated_gzip":
        path.write_bytes(path.read_bytes()[:-40])
    elif how == "corrupt_gzip":
        b = bytearray(path.read_bytes())
        for i in range(20, min(len(b) - 8, 60)):
            b[i] ^= 0xFF
        path.write_bytes(bytes(b))
    elif how == "truncated_payload":
        path.write_bytes(gzip.compress(raw[:-100]))
    elif how == "trailing_bytes":
        path.write_bytes(gzip.compress(raw + b"\x00" * 7))
    elif how == "bad_magic":
        path.write_bytes(gzip.compress(b"\x12\x34" + raw[2:]))
    elif how == "empty":
        path.write_bytes(b"")
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated_gzip", "truncated gzip stream"),
        ("corrupt_gzip", "corrupt gzip stream"),
        ("truncated_payload", "truncated: the header declares 96 x 28 x 28"),
        ("trailing_bytes", "7 unexpected bytes"),
        ("bad_magic", "not an IDX file"),
        ("empty", "not an IDX file"),
    ],
)
def test_corrupt_files_name_the_file(idx_dir: Path, how: str, message: str) -> None:
    target = idx_dir / "train-images-idx3-ubyte.gz"
    _corrupt(target, how)
    with pytest.raises(MnistDataError) as exc:
        load_mnist(idx_dir, verify=False, download=False)
    assert str(target) in str(exc.value) and message in str(exc.value)


@pytest.mark.parametrize(
    ("dims", "shape", "need"),
    [
        ((65536,) * 4, "65536 x 65536 x 65536 x 65536", 18446744073709551616),  # 2**64
        ((2**32 - 1,) * 2, "4294967295 x 4294967295", 18446744065119617025),  # (2**32 - 1)**2
    ],
)
def test_a_header_whose_size_overflows_int64_is_named_with_the_true_byte_count(
    idx_dir: Path, dims: tuple[int, ...], shape: str, need: int
) -> None:
    """The declared size is a Python int: 65536**4 bytes is 2**64, which an int64 product wraps to 0."""
    target = idx_dir / "train-images-idx3-ubyte.gz"
    header = b"\x00\x00\x08" + bytes([len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
    target.write_bytes(gzip.compress(header))  # no payload
    with pytest.raises(MnistDataError) as exc:
        load_mnist(idx_dir, verify=False, download=False)
    assert str(exc.value) == (
        f"{target}: truncated: the header declares {shape} items ({need} bytes) but only 0 bytes follow; "
        "delete it and download again"
    )


def test_missing_file_named(idx_dir: Path) -> None:
    (idx_dir / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte\.gz: missing"):
        load_mnist(idx_dir, verify=False, download=False)


def test_wrong_count_named(idx_dir: Path) -> None:
    with pytest.raises(MnistDataError, match=r"train-images-idx3-ubyte\.gz: holds 96 images, expected 60000"):
        load_mnist(idx_dir, download=False)  # verify=True needs the original counts


def test_image_label_count_mismatch_names_both(idx_dir: Path) -> None:
    write_idx(idx_dir / "train-labels-idx1-ubyte.gz", np.zeros(95, dtype=np.uint8))
    with pytest.raises(
        MnistDataError, match=r"holds 96 images but .*train-labels-idx1-ubyte\.gz holds 95 labels"
    ):
        load_mnist(idx_dir, verify=False, download=False)


@pytest.mark.parametrize(
    ("name", "arr", "message"),
    [
        ("train-images-idx3-ubyte.gz", np.zeros((96, 14, 14), np.uint8), "expected (N, 28, 28) images"),
        ("train-labels-idx1-ubyte.gz", np.full(96, 10, np.uint8), "label 10 out of range"),
        ("train-labels-idx1-ubyte.gz", np.zeros((96, 2), np.uint8), "expected (N,) labels"),
        ("t10k-labels-idx1-ubyte.gz", np.zeros(0, np.uint8), "holds no labels"),
    ],
)
def test_wrong_content_named(idx_dir: Path, name: str, arr: np.ndarray, message: str) -> None:
    write_idx(idx_dir / name, arr)
    with pytest.raises(MnistDataError) as exc:
        load_mnist(idx_dir, verify=False, download=False)
    assert name in str(exc.value) and message in str(exc.value)


def test_non_byte_idx_named(idx_dir: Path) -> None:
    target = idx_dir / "t10k-labels-idx1-ubyte.gz"
    target.write_bytes(gzip.compress(b"\x00\x00\x0c\x01" + struct.pack(">I", 48) + bytes(4 * 48)))
    with pytest.raises(MnistDataError, match=r"t10k-labels-idx1-ubyte\.gz: holds int32 values"):
        load_mnist(idx_dir, verify=False, download=False)


# --- download ----------------------------------------------------------------------------------------
def test_fetch_from_mirrors_falls_back_and_verifies(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, idx_dir: Path
) -> None:
    _patch_specs(monkeypatch, idx_dir)
    bad = make_idx_set(tmp_path / "bad_mirror", seed=1)  # well-formed, wrong checksums
    empty = tmp_path / "empty_mirror"
    empty.mkdir()
    mirrors = [empty.as_uri() + "/", bad.as_uri() + "/", idx_dir.as_uri() + "/"]
    dest = tmp_path / "cache"
    data = load_mnist(dest, mirrors=mirrors)
    assert data.verified and sorted(p.name for p in dest.iterdir()) == sorted(
        s.name + ".gz" for s in FILES.values()
    )
    assert not list(dest.glob(".*tmp"))


def test_fetch_failure_names_file_and_urls(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, idx_dir: Path
) -> None:
    _patch_specs(monkeypatch, idx_dir)
    bad = make_idx_set(tmp_path / "bad_mirror", seed=1)
    with pytest.raises(FileNotFoundError) as exc:
        load_mnist(tmp_path / "cache", mirrors=[bad.as_uri()])
    msg = str(exc.value)
    assert "train-images-idx3-ubyte.gz: missing and could not be downloaded" in msg and "md5" in msg
    assert bad.as_uri() in msg
    assert not (tmp_path / "cache" / "train-images-idx3-ubyte.gz").exists()  # nothing half-written


# --- where the data is ---------------------------------------------------------------------------------
def test_resolve_data_dir_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    work = tmp_path / "repo"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert D.resolve_data_dir() == tmp_path / "xdg" / "focus_optim" / "mnist"
    (tmp_path / "shared" / "data" / "mnist").mkdir(parents=True)
    assert D.resolve_data_dir().resolve() == (tmp_path / "shared" / "data" / "mnist").resolve()
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path / "env"))
    assert D.resolve_data_dir() == tmp_path / "env"
    assert D.resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
