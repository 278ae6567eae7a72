"""The download stage: mirrors in order, content verified, nothing untrusted left behind."""

from __future__ import annotations

import collections
import contextlib
import functools
import gzip
import http.server
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from digits.lib.config import parse_params
from digits.stages.download import MIRROR_ENV, DownloadError, download, sources

from conftest import free_port


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
    # under DVC (also `dvc exp run --temp`), relative folders are the project's
    relative = config(small_params, ["https://a/"], local="mnist")
    assert sources(relative, env={MIRROR_ENV: "../m", "DVC_ROOT": "/proj"}) == [
        "/proj/../m",
        "/proj/mnist",
        "https://a/",
    ]


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


class FaultyMirror(http.server.SimpleHTTPRequestHandler):
    """Serves the synthetic mirror under /ok/, and a fault under every other prefix:
    /e500/ server error, /slow/ answers after the client's timeout, /cut/ ends the body early,
    /html/ answers 200 with an HTML page."""

    hits: ClassVar[collections.Counter] = collections.Counter()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        prefix, _, rest = self.path.lstrip("/").partition("/")
        self.hits[prefix] += 1
        if prefix == "ok":
            self.path = "/" + rest
            return super().do_GET()
        if prefix == "e500":
            return self.send_error(500)
        if prefix == "slow":
            time.sleep(3)
        body = b"<html><body>Please log in</body></html>" if prefix == "html" else b"\x1f\x8b" * 50
        with contextlib.suppress(ConnectionError):  # the client may have given up (slow)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) * (10 if prefix == "cut" else 1)))
            self.end_headers()
            self.wfile.write(body)  # for /cut/: a tenth of the promised length, then close


@pytest.fixture
def faulty_mirror(mirror) -> Iterator[str]:
    folder, _ = mirror
    FaultyMirror.hits.clear()
    handler = functools.partial(FaultyMirror, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_every_http_fault_falls_through_to_the_next_mirror(
    tmp_path: Path, small_params, mirror, faulty_mirror: str
) -> None:
    """500 (retried with back-off), timeout, truncated body and an HTML page are each skipped;
    the files come from the good mirror and nothing else is left in the output folder."""
    _, hashes = mirror
    bad = [f"{faulty_mirror}/{fault}/" for fault in ("e500", "slow", "cut", "html")]
    small_params["download"].update(retries=1, timeout=1)
    cfg = config(small_params, [*bad, f"{faulty_mirror}/ok/"])
    out = tmp_path / "raw"
    download(cfg, out, env={})
    assert sorted(p.name for p in out.iterdir()) == sorted(hashes)
    assert FaultyMirror.hits["e500"] == 2 * len(hashes), "one retry per file"
    assert FaultyMirror.hits["ok"] == len(hashes)


def test_all_mirrors_failing_names_the_file_the_mirrors_and_what_to_do(
    tmp_path: Path, small_params, faulty_mirror: str
) -> None:
    bad = [f"{faulty_mirror}/{fault}/" for fault in ("e500", "cut", "html")]
    small_params["download"].update(retries=0, timeout=1)
    out = tmp_path / "raw"
    with pytest.raises(DownloadError) as err:
        download(config(small_params, bad), out, env={})
    message = str(err.value)
    assert re.match(r"could not get (train|t10k)-(images|labels)-idx[13]-ubyte \(sha256", message)
    assert all(url in message for url in bad)
    assert "MNIST_MIRROR" in message
    assert list(out.iterdir()) == []
