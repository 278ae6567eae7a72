"""The download stage: mirrors in order, content verified, nothing untrusted left behind."""

from __future__ import annotations

import gzip
import socket
from pathlib import Path

import pytest

from digits.config import parse_params
from digits.download import MIRROR_ENV, DownloadError, download, sources


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(params: dict, mirrors: list[str], local: str | None = None):
    params["download"].update(mirrors=mirrors, local_mirror=local)
    return parse_params(params).download


def test_source_order(small_params) -> None:
    cfg = config(small_params, ["https://a/", "https://b/"], local="/param/folder")
    assert sources(cfg, env={MIRROR_ENV: "/env/folder"}) == [
        "/env/folder",
        "/param/folder",
        "https://a/",
        "https://b/",
    ]
    assert sources(cfg, env={}) == ["/param/folder", "https://a/", "https://b/"]


def test_http_mirror_after_dead_ones(tmp_path: Path, small_params, mirror, http_mirror) -> None:
    """Connection refused and 404 are skipped; the files come from the working mirror."""
    folder, hashes = mirror
    dead = f"http://127.0.0.1:{free_port()}/"
    missing = http_mirror + "no-such-dir/"
    cfg = config(small_params, [dead, missing, http_mirror])
    paths = download(cfg, tmp_path / "raw", env={})
    assert sorted(p.name for p in paths) == sorted(hashes)
    for path in paths:
        assert path.read_bytes() == gzip.decompress((folder / f"{path.name}.gz").read_bytes())
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(hashes)


def test_env_mirror_is_used_first(tmp_path: Path, small_params, mirror) -> None:
    folder, hashes = mirror
    cfg = config(small_params, [f"http://127.0.0.1:{free_port()}/"])
    download(cfg, tmp_path / "raw", env={MIRROR_ENV: str(folder)})
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(hashes)


def test_corrupt_mirror_leaves_nothing_and_names_everything(
    tmp_path: Path, small_params, mirror
) -> None:
    folder, hashes = mirror
    bad = tmp_path / "bad-mirror"
    bad.mkdir()
    for name in hashes:  # right names, wrong content: truncated, or an HTML error page
        data = gzip.decompress((folder / f"{name}.gz").read_bytes())
        (bad / f"{name}.gz").write_bytes(
            gzip.compress(data[:-10]) if "images" in name else b"<html>Not Found</html>"
        )
    dead = f"http://127.0.0.1:{free_port()}/"
    cfg = config(small_params, [str(bad), dead])
    out = tmp_path / "raw"
    with pytest.raises(DownloadError) as err:
        download(cfg, out, env={})
    message = str(err.value)
    assert "could not get t10k-images-idx3-ubyte" in message
    assert str(bad) in message and dead in message
    assert "does not match" in message and "MNIST_MIRROR" in message
    assert list(out.iterdir()) == []  # nothing a later run could trust
