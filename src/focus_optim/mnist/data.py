"""MNIST from the original IDX files (gzip-compressed or raw), verified, never silently partial.

Where the files are looked for (:func:`resolve_data_dir`), first match wins:

1. an explicit directory (``--data-dir``);
2. the environment variable ``FOCUS_OPTIM_MNIST``;
3. ``../shared/data/mnist`` relative to the working directory, if it exists (the project's offline copy);
4. a cache directory, ``$XDG_CACHE_HOME/focus_optim/mnist`` (default ``~/.cache/focus_optim/mnist``).

In each directory a file is found as ``<name>.gz`` or ``<name>`` (raw), e.g.
``train-images-idx3-ubyte.gz``; the format is told by the gzip magic bytes, not by the suffix.
Missing files are downloaded (if allowed) from the standard public mirrors (:data:`MIRRORS`)
into that directory, each checked against the MD5 of its decompressed content before it is
renamed into place. The directory is created only once a file has been downloaded, so a failed
download leaves no empty directory behind, and the error says when the directory did not exist
(a mistyped ``--data-dir`` or ``FOCUS_OPTIM_MNIST``).

Every problem raises :class:`MnistDataError` (a ``ValueError``) or ``FileNotFoundError`` naming
the file and what is wrong: missing, corrupt or truncated gzip stream, not an IDX file, a
truncated payload or trailing bytes, the wrong number of items, a wrong image size, labels out of
range, image and label counts that disagree, or (with ``verify=True``, the default) an MD5 that
differs from the original distribution's.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from ..atomic import write_atomic

ENV_VAR = "FOCUS_OPTIM_MNIST"
SHARED_DIR = Path("..") / "shared" / "data" / "mnist"
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
IMAGE_SIZE = 28
NUM_CLASSES = 10


@dataclass(frozen=True)
class FileSpec:
    """One of the four MNIST files: its name (without ``.gz``), what it holds and its checksum."""

    name: str
    kind: str  # "images" or "labels"
    count: int
    md5: str  # of the decompressed file, as in the original distribution


FILES: dict[str, FileSpec] = {
    "train_images": FileSpec("train-images-idx3-ubyte", "images", 60_000, "6bbc9ace898e44ae57da46a324031adb"),
    "train_labels": FileSpec("train-labels-idx1-ubyte", "labels", 60_000, "a25bea736e30d166cdddb491f175f624"),
    "test_images": FileSpec("t10k-images-idx3-ubyte", "images", 10_000, "2646ac647ad5339dbf082846283269ea"),
    "test_labels": FileSpec("t10k-labels-idx1-ubyte", "labels", 10_000, "27ae3e4e09519cfbb04c329615203637"),
}

# IDX type codes -> numpy big-endian dtypes
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class MnistDataError(ValueError):
    """A data file exists but is unusable; the message names the file and the problem."""


@dataclass(frozen=True)
class MNIST:
    """The four arrays (uint8; images ``(N, 28, 28)``, labels ``(N,)``) and where they came from."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    directory: Path
    verified: bool
    md5: dict[str, str] = field(default_factory=dict)

    @property
    def data_id(self) -> str:
        """``"mnist"`` for the verified original files, else a fingerprint of what was loaded."""
        if self.verified:
            return "mnist"
        digest = hashlib.md5("".join(self.md5[k] for k in sorted(self.md5)).encode()).hexdigest()[:12]
        return f"unverified:{len(self.train_labels)}/{len(self.test_labels)}:{digest}"


# --- IDX ----------------------------------------------------------------------------------------
def decompress(raw: bytes, path: str | os.PathLike[str]) -> bytes:
    """The file's content: gunzipped if it starts with the gzip magic bytes, else as is."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError as exc:
        raise MnistDataError(f"{path}: truncated gzip stream ({exc}); delete it and download again") from None
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise MnistDataError(f"{path}: corrupt gzip stream ({exc}); delete it and download again") from None


def parse_idx(data: bytes, path: str | os.PathLike[str] = "<bytes>") -> np.ndarray:
    """Parse an IDX byte string into an array, checking the header against the payload size."""
    if len(data) < 4:
        raise MnistDataError(f"{path}: not an IDX file (only {len(data)} bytes, shorter than the header)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise MnistDataError(
            f"{path}: not an IDX file (magic bytes {data[:4].hex()}; expected 0000 then a type code "
            f"in {sorted(hex(c) for c in _IDX_DTYPES)} and the number of dimensions)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise MnistDataError(f"{path}: truncated IDX header ({len(data)} bytes; {ndim} dims need {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    need = math.prod(dims) * dtype.itemsize  # (Python ints: an int64 product of big dims wraps)
    have = len(data) - header
    shape = " x ".join(str(d) for d in dims)
    if have < need:
        raise MnistDataError(
            f"{path}: truncated: the header declares {shape} items ({need} bytes) but only {have} bytes "
            "follow; delete it and download again"
        )
    if have > need:
        raise MnistDataError(f"{path}: {have - need} unexpected bytes after the {shape} items declared")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)  # native byte order, writable


def read_idx(path: str | os.PathLike[str]) -> tuple[np.ndarray, str]:
    """Read an IDX file (gz or raw): ``(array, md5 of the decompressed content)``."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: no such file") from None
    data = decompress(raw, p)
    return parse_idx(data, p), hashlib.md5(data).hexdigest()


def check_array(arr: np.ndarray, spec: FileSpec, path: Path, *, exact_count: bool) -> None:
    """Check an array parsed from ``path`` against what ``spec`` says it holds."""
    if arr.dtype != np.uint8:
        raise MnistDataError(f"{path}: holds {arr.dtype} values, expected unsigned bytes (IDX type 0x08)")
    if spec.kind == "images" and (arr.ndim != 3 or arr.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE)):
        raise MnistDataError(f"{path}: holds an array of shape {arr.shape}, expected (N, 28, 28) images")
    if spec.kind == "labels":
        if arr.ndim != 1:
            raise MnistDataError(f"{path}: holds an array of shape {arr.shape}, expected (N,) labels")
        if arr.size and int(arr.max()) >= NUM_CLASSES:
            raise MnistDataError(f"{path}: label {int(arr.max())} out of range (expected 0..9)")
    if exact_count and arr.shape[0] != spec.count:
        raise MnistDataError(f"{path}: holds {arr.shape[0]} {spec.kind}, expected {spec.count}")
    if arr.shape[0] == 0:
        raise MnistDataError(f"{path}: holds no {spec.kind}")


# --- where the files are --------------------------------------------------------------------------
def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "focus_optim" / "mnist"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The directory to read MNIST from (see the module docstring for the order)."""
    if data_dir:
        return Path(data_dir)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    if SHARED_DIR.is_dir():
        return SHARED_DIR
    return default_cache_dir()


def find_file(directory: Path, spec: FileSpec) -> Path | None:
    for candidate in (directory / f"{spec.name}.gz", directory / spec.name):
        if candidate.is_file():
            return candidate
    return None


# --- download -------------------------------------------------------------------------------------
def _missing_dir_note(directory: Path) -> str | None:
    """Why ``directory`` cannot hold the files, if it is not a directory (a mistyped path?)."""
    if directory.is_dir():
        return None
    if directory.exists():
        return f"{directory} is not a directory"
    return f"the directory {directory} did not exist"


def _make_dirs(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; return the ones this call created, outermost
    first (one that another process creates meanwhile is not counted)."""
    missing = []
    d = directory
    while not d.exists() and d.parent != d:
        missing.append(d)
        d = d.parent
    created = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        created.append(d)
    return created


def _remove_empty(created: list[Path]) -> None:
    """Remove the directories :func:`_make_dirs` created, innermost first, while they are empty."""
    for d in reversed(created):
        try:
            d.rmdir()  # only an empty directory
        except OSError:
            return


def fetch_file(
    directory: Path, spec: FileSpec, mirrors: Sequence[str] = MIRRORS, *, timeout: float = 60.0
) -> Path:
    """Download ``spec`` into ``directory`` from the first mirror whose file has the right MD5.

    ``directory`` (and its missing parents) is created only for a download that succeeded, and
    removed again, if still empty, when writing the file fails: a failed download leaves no empty
    directory behind. If ``directory`` did not exist, the error says so (a mistyped path)."""
    target = directory / f"{spec.name}.gz"
    note = _missing_dir_note(directory)
    failures = [note] if note else []
    for mirror in mirrors:
        url = mirror.rstrip("/") + f"/{spec.name}.gz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                raw = resp.read()
            md5 = hashlib.md5(decompress(raw, url)).hexdigest()
        except (urllib.error.URLError, OSError, MnistDataError) as exc:
            failures.append(f"{url}: {exc}")
            continue
        if md5 != spec.md5:
            failures.append(f"{url}: md5 {md5} != {spec.md5}")
            continue

        def write(f: IO[bytes], data: bytes = raw) -> int:
            return f.write(data)

        created = _make_dirs(directory)
        try:
            return write_atomic(target, write)
        except BaseException:
            _remove_empty(created)
            raise
    raise FileNotFoundError(
        f"{target}: missing and could not be downloaded ({'; '.join(failures)}). Put the MNIST files in a "
        f"directory and pass --data-dir or set {ENV_VAR}."
    )


def fetch_mnist(directory: str | os.PathLike[str], mirrors: Sequence[str] = MIRRORS) -> list[Path]:
    """Download every missing MNIST file into ``directory``; return the four paths."""
    d = Path(directory)
    return [find_file(d, s) or fetch_file(d, s, mirrors) for s in FILES.values()]


# --- loading --------------------------------------------------------------------------------------
_CACHE: dict[tuple[object, ...], MNIST] = {}


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    verify: bool = True,
    download: bool = True,
    mirrors: Sequence[str] = MIRRORS,
) -> MNIST:
    """Load the four MNIST files from :func:`resolve_data_dir(data_dir) <resolve_data_dir>`.

    Args:
        verify: require the original counts (60,000 / 10,000) and MD5s. With ``False`` any
            well-formed, consistent IDX set is accepted (tests, other digit sets); the result's
            ``verified``/``data_id`` say which it was, and a sweep stores that in its config.
        download: fetch missing files from ``mirrors`` (into the resolved directory).
    """
    directory = resolve_data_dir(data_dir)
    paths = {}
    for key, spec in FILES.items():
        path = find_file(directory, spec)
        if path is None:
            if not download:
                note = _missing_dir_note(directory)
                raise FileNotFoundError(
                    f"{directory / (spec.name + '.gz')}: missing (also looked for {directory / spec.name}"
                    f"{'; ' + note if note else ''}); pass --data-dir, set {ENV_VAR}, or run "
                    "`focus-optim mnist fetch`"
                )
            path = fetch_file(directory, spec, mirrors)
        paths[key] = path
    stamp = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in paths.values())
    cache_key = (stamp, verify)
    if cache_key in _CACHE:
        return _CACHE[cache_key]

    arrays, md5s = {}, {}
    for key, path in paths.items():
        spec = FILES[key]
        arr, md5 = read_idx(path)
        check_array(arr, spec, path, exact_count=verify)
        if verify and md5 != spec.md5:
            raise MnistDataError(
                f"{path}: checksum mismatch: md5 of the decompressed content is {md5}, expected {spec.md5}; "
                "delete it and download again"
            )
        arrays[key], md5s[key] = arr, md5
    for split in ("train", "test"):
        ni, nl = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if ni != nl:
            images, labels = paths[f"{split}_images"], paths[f"{split}_labels"]
            raise MnistDataError(f"{images} holds {ni} images but {labels} holds {nl} labels")
    verified = all(md5s[k] == FILES[k].md5 for k in FILES)
    data = MNIST(**arrays, directory=directory, verified=verified, md5=md5s)
    _CACHE[cache_key] = data
    return data


def write_idx(path: str | os.PathLike[str], arr: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``arr`` (uint8) as an IDX file, gzipped if ``compress`` (default: name ends in .gz)."""
    p = Path(path)
    a = np.ascontiguousarray(arr, dtype=np.uint8)
    data = struct.pack(">HBB", 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
    if compress if compress is not None else p.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    p.write_bytes(data)
    return p
