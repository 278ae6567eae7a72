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
from digits.lib.environment import Environment
from digits.stages.download import DownloadError, download, sources

from helpers import free_port


def config(params: dict, mirrors: list[str], local: str | None = None):
    params["download"].update(mirrors=mirrors, local_mirror=local)
    return parse_params(params).download


def test_source_order(small_params) -> None:
    cfg = config(small_params, ["https://a/", "https://b/"], local="/param/folder")
    assert sources(cfg, Environment(mnist_mirror="/env/folder")) == [
        "/env/folder",
        "/param/folder",
        "https://a/",
        "https://b/",
    ]
    assert sources(cfg, Environment()) == ["/param/folder", "https://a/", "https://b/"]
    # under DVC (also `dvc exp run --temp`), relative folders are the project's
    relative = config(small_params, ["https://a/"], local="mnist")
    assert sources(relative, Environment.read({"MNIST_MIRROR": "../m", "DVC_ROOT": "/proj"})) == [
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
    paths = download(cfg, tmp_path / "raw", Environment())
    assert sorted(p.name for p in paths) == sorted(hashes)
    for path in paths:
        assert path.read_bytes() == gzip.decompress((folder / f"{path.name}.gz").read_bytes())
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(hashes)


def test_env_mirror_is_used_first(tmp_path: Path, small_params, mirror) -> None:
    folder, hashes = mirror
    cfg = config(small_params, [f"http://127.0.0.1:{free_port()}/"])
    download(cfg, tmp_path / "raw", Environment(mnist_mirror=str(folder)))
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
        download(cfg, out, Environment())
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
        if prefix == "endless":  # a response that never ends (until the client hangs up)
            with contextlib.suppress(ConnectionError):
                self.send_response(200)
                self.end_headers()
                for _ in range(4096):  # 256 MiB at most, should the client never stop
                    self.wfile.write(b"\x1f\x8b" + b"\0" * 65534)
            return
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
    tmp_path: Path, small_params, mirror, faulty_mirror: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """500 (retried with back-off), timeout, truncated body and an HTML page are each skipped;
    the files come from the good mirror and nothing else is left in the output folder."""
    import types

    import pooch.core

    waits: list[float] = []  # pooch's back-off is recorded, not slept (16 of 20 s of this test)
    monkeypatch.setattr(pooch.core, "time", types.SimpleNamespace(sleep=waits.append))
    _, hashes = mirror
    bad = [f"{faulty_mirror}/{fault}/" for fault in ("e500", "slow", "cut", "html")]
    small_params["download"].update(retries=1, timeout=0.5)  # /slow/ answers after 3 s
    cfg = config(small_params, [*bad, f"{faulty_mirror}/ok/"])
    out = tmp_path / "raw"
    download(cfg, out, Environment())
    assert sorted(p.name for p in out.iterdir()) == sorted(hashes)
    assert FaultyMirror.hits["e500"] == 2 * len(hashes), "one retry per file"
    # a back-off before each retry of a request error (500, timeout, cut); a wrong page is
    # refused by the hash check, which is not pooch's and not retried
    assert waits == [1] * 3 * len(hashes)
    assert FaultyMirror.hits["ok"] == len(hashes)


def test_all_mirrors_failing_names_the_file_the_mirrors_and_what_to_do(
    tmp_path: Path, small_params, faulty_mirror: str
) -> None:
    bad = [f"{faulty_mirror}/{fault}/" for fault in ("e500", "cut", "html")]
    small_params["download"].update(retries=0, timeout=1)
    out = tmp_path / "raw"
    with pytest.raises(DownloadError) as err:
        download(config(small_params, bad), out, Environment())
    message = str(err.value)
    assert re.match(r"could not get (train|t10k)-(images|labels)-idx[13]-ubyte \(sha256", message)
    assert all(url in message for url in bad)
    assert "MNIST_MIRROR" in message
    assert list(out.iterdir()) == []


# --- caps on bytes downloaded and decompressed (issue 18) --------------------------------------


def capped(params: dict, mirrors: list[str], hashes: dict[str, str], folder: Path):
    """The config with `sizes` set to the synthetic files' real sizes (10% margin)."""
    params["download"]["sizes"] = {
        name: len(gzip.decompress((folder / f"{name}.gz").read_bytes())) for name in hashes
    }
    return config(params, mirrors)


def test_an_endless_response_is_cut_off_at_the_cap_and_the_next_mirror_used(
    tmp_path: Path, small_params, mirror, faulty_mirror: str
) -> None:
    folder, hashes = mirror
    small_params["download"].update(retries=2, timeout=5)
    cfg = capped(
        small_params, [f"{faulty_mirror}/endless/", f"{faulty_mirror}/ok/"], hashes, folder
    )
    out = tmp_path / "raw"
    download(cfg, out, Environment())
    assert sorted(p.name for p in out.iterdir()) == sorted(hashes)
    assert FaultyMirror.hits["endless"] == len(hashes), "not retried: the cap is not a glitch"


def test_the_cap_error_names_the_source_and_the_limit(
    tmp_path: Path, small_params, mirror, faulty_mirror: str, caplog
) -> None:
    folder, hashes = mirror
    small_params["download"].update(retries=0, timeout=5)
    endless = f"{faulty_mirror}/endless/"
    cfg = capped(small_params, [endless], hashes, folder)
    with pytest.raises(DownloadError) as err:
        download(cfg, tmp_path / "raw", Environment())
    name = str(err.value).split()[3]
    cap = cfg.cap(name)
    assert f"{endless}{name}.gz: the download passed {cap:,} bytes" in str(err.value)
    assert "download.sizes" in str(err.value) and "download.size_margin" in str(err.value)
    assert list((tmp_path / "raw").iterdir()) == []


def test_a_gzip_bomb_or_an_oversized_file_in_a_folder_is_refused(
    tmp_path: Path, small_params, mirror
) -> None:
    folder, hashes = mirror
    bombs, big = tmp_path / "bombs", tmp_path / "big"
    for target in (bombs, big):
        target.mkdir()
        for name in hashes:
            (target / f"{name}.gz").write_bytes((folder / f"{name}.gz").read_bytes())
    name = "train-images-idx3-ubyte"  # 470 KB: capped at 521 KB
    (bombs / f"{name}.gz").write_bytes(gzip.compress(b"\0" * 100_000_000))  # 97 KB -> 100 MB
    (big / f"{name}.gz").unlink()
    (big / name).write_bytes(b"\0" * 10_000_000)
    cfg = capped(small_params, [str(bombs), str(big)], hashes, folder)
    with pytest.raises(DownloadError) as err:
        download(cfg, tmp_path / "raw", Environment())
    cap = cfg.cap(name)
    assert f"{bombs}: {bombs}: the decompressed content passed {cap:,} bytes" in str(err.value)
    assert f"{big}: {big}: the file (10,000,000 bytes) passed {cap:,} bytes" in str(err.value)
    assert not (tmp_path / "raw" / name).exists()


def test_real_mnist_sizes_fit_under_their_caps() -> None:
    """The defaults are real MNIST's, so the real files pass; the synthetic mirror is far
    smaller and passes too."""
    from digits.lib.config import MNIST_SIZES

    from helpers import real_params

    cfg = parse_params(real_params()).download
    assert all(MNIST_SIZES[n] < cfg.cap(n) <= 1.1 * MNIST_SIZES[n] + 4096 for n in MNIST_SIZES)


def test_a_full_disk_while_unpacking_is_named_as_such(
    tmp_path: Path, small_params, mirror, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """ENOSPC on the write (patched in): not "corrupt gzip data", not the next source: an
    error naming the file and the free space, and nothing left in data/raw/."""
    import builtins
    import errno

    import yaml

    from digits.stages import download as stage

    folder, _ = mirror
    real_open = builtins.open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return FullDisk(f) if "w" in mode else f

    monkeypatch.setattr(stage, "open", fake_open, raising=False)
    small_params["download"].update(mirrors=[str(folder), str(folder)])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(small_params))
    out = tmp_path / "raw"
    with pytest.raises(SystemExit) as exit_:
        stage.main(["--params", str(tmp_path / "params.yaml"), "--out", str(out)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert re.search(
        rf"error: no space left on the device writing {re.escape(str(out))}/\S+-ubyte "
        r"\(free there: [\d,]+ bytes",
        err,
    ), err
    assert "corrupt" not in err and f"from {folder} failed" not in err
    assert list(out.iterdir()) == []
