"""A mistyped data directory: a failed download leaves no directory behind (never one that existed
or holds files), and the error says that the directory did not exist. No network: the mirrors are
local ``file://`` directories, or ``urlopen`` is replaced by one that fails."""

from __future__ import annotations

import gzip
import hashlib
import urllib.error
from pathlib import Path

import pytest

from focus_optim.cli import main
from focus_optim.mnist import data as D
from focus_optim.mnist.data import load_mnist


@pytest.fixture
def empty_mirror(tmp_path: Path) -> list[str]:
    mirror = tmp_path / "empty_mirror"
    mirror.mkdir()
    return [mirror.as_uri() + "/"]


def test_failed_download_into_missing_dir_removes_it_and_says_so(
    tmp_path: Path, empty_mirror: list[str]
) -> None:
    typo = tmp_path / "typo" / "mnist"  # two levels created for the download
    with pytest.raises(FileNotFoundError) as exc:
        load_mnist(typo, mirrors=empty_mirror)
    msg = str(exc.value)
    assert f"{typo / 'train-images-idx3-ubyte.gz'}: missing and could not be downloaded" in msg
    assert f"the directory {typo} did not exist" in msg
    assert not (tmp_path / "typo").exists()


def test_failed_download_keeps_a_directory_that_existed(tmp_path: Path, empty_mirror: list[str]) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(FileNotFoundError) as exc:
        load_mnist(existing, mirrors=empty_mirror)
    assert "did not exist" not in str(exc.value)
    assert existing.is_dir() and not list(existing.iterdir())


def test_failed_download_into_default_cache_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, empty_mirror: list[str]
) -> None:
    work = tmp_path / "repo"  # no ../shared/data/mnist next to it
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(FileNotFoundError, match="did not exist"):
        load_mnist(mirrors=empty_mirror)
    assert not (tmp_path / "xdg").exists()


def test_missing_dir_without_download_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"the directory {tmp_path / 'nope'} did not exist"):
        load_mnist(tmp_path / "nope", download=False)
    assert not (tmp_path / "nope").exists()


def _one_file_mirror(tmp_path: Path) -> tuple[D.FileSpec, list[str]]:
    content = b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02\x03"  # IDX labels 1, 2, 3
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "x-idx1-ubyte.gz").write_bytes(gzip.compress(content))
    return D.FileSpec("x-idx1-ubyte", "labels", 3, hashlib.md5(content).hexdigest()), [mirror.as_uri()]


def test_fetch_creates_dirs_only_for_a_file_it_wrote(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec, mirrors = _one_file_mirror(tmp_path)
    # the download succeeds but writing fails: the directories made for it go again
    dest = tmp_path / "a" / "b"

    def disk_full(path: Path, write: object) -> Path:
        raise OSError("No space left on device")

    monkeypatch.setattr(D, "write_atomic", disk_full)
    with pytest.raises(OSError, match="No space left"):
        D.fetch_file(dest, spec, mirrors)
    assert not (tmp_path / "a").exists()

    # ... but never one that holds a file (here another process's, written meanwhile)
    def someone_else_writes(path: Path, write: object) -> Path:
        (path.parent / "other.txt").write_text("x")
        raise OSError("No space left on device")

    monkeypatch.setattr(D, "write_atomic", someone_else_writes)
    with pytest.raises(OSError):
        D.fetch_file(dest, spec, mirrors)
    assert (dest / "other.txt").is_file()

    monkeypatch.undo()
    other = tmp_path / "c" / "d"
    assert D.fetch_file(other, spec, mirrors) == other / "x-idx1-ubyte.gz"
    assert (other / "x-idx1-ubyte.gz").is_file()


def test_cli_mistyped_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    def offline(url: str, timeout: float = 0.0) -> None:
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(D.urllib.request, "urlopen", offline)
    typo = tmp_path / "nonexistent-dir"
    out = tmp_path / "m2"
    code = main(["mnist", "run", "--preset", "quick", "--out", str(out), "--data-dir", str(typo)])
    err = capsys.readouterr().err
    assert code == 2
    assert "missing and could not be downloaded" in err and f"the directory {typo} did not exist" in err
    assert "offline (test)" in err
    assert not typo.exists() and not out.exists()
