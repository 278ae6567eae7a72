"""Stage `download`: the four IDX files into `data/raw/`, each verified before it lands.

Sources are tried in order: the folder in $MNIST_MIRROR, then `download.local_mirror`, then the
public `download.mirrors`. Each file is checked against the sha256 of its *decompressed* content,
so any faithful mirror passes and `data/raw/` is byte-identical whichever one served it. Transport
(retries with back-off, timeouts, progress bars) is pooch's; a file is renamed into place only
after its hash matches, so a failed run leaves nothing a later run would trust. Bytes downloaded
and bytes decompressed are both capped at the file's expected size plus `download.size_margin`:
an endless response or a gzip bomb is cut off there, not when the disk is full.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import logging
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from digits import PipelineError
from digits.lib.cli import stage_main
from digits.lib.config import DownloadConfig, load_params
from digits.lib.environment import Environment
from digits.lib.files import atomic_path, reporting_disk_full

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class DownloadError(PipelineError):
    """No source produced a file with the expected content."""


class TooLarge(DownloadError):
    """A source sent (or its gzip unpacked to) more bytes than the file can have."""


def too_large(source: str, what: str, cap: int) -> TooLarge:
    return TooLarge(
        f"{source}: {what} passed {cap:,} bytes, the file's expected size (download.sizes) "
        "plus download.size_margin: aborted (an endless response, a gzip bomb, or not the MNIST "
        "file)"
    )


def sources(cfg: DownloadConfig, env: Environment) -> list[str]:
    """Where to look, in order: $MNIST_MIRROR, `local_mirror`, then the public mirrors. A
    relative folder is the project's ($DVC_ROOT), also in `dvc exp run --temp`."""
    root = env.dvc_root
    local = [
        str(root / s) if root and "://" not in s and not Path(s).is_absolute() else s
        for s in (env.mnist_mirror, cfg.local_mirror)
        if s
    ]
    return list(dict.fromkeys([*local, *cfg.mirrors]))


def is_url(source: str) -> bool:
    """True for http(s)/ftp mirrors, False for a local folder."""
    return source.split("://", 1)[0] in {"http", "https", "ftp"}


def unpack_verified(
    archive: Path, dest: Path, sha256: str, cap: int | None = None, source: str = ""
) -> None:
    """Decompress `archive` (gzip or plain) to `dest`, atomically, if its content matches.
    More than `cap` bytes, packed or unpacked, aborts with an error naming `source`."""
    digest = hashlib.sha256()
    source = source or str(archive)
    if cap is not None and archive.stat().st_size > cap:
        raise too_large(source, f"the file ({archive.stat().st_size:,} bytes)", cap)
    with open(archive, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with atomic_path(dest) as tmp, opener(archive, "rb") as src, open(tmp, "wb") as out:
        size = 0
        while True:
            try:
                chunk = src.read(CHUNK)
            except (OSError, EOFError, zlib.error) as err:  # reading: the archive is bad
                raise DownloadError(f"corrupt gzip data ({err})") from None
            if not chunk:
                break
            size += len(chunk)
            if cap is not None and size > cap:
                raise too_large(source, "the decompressed content", cap)
            digest.update(chunk)
            out.write(chunk)  # writing: ENOSPC here is a full disk (atomic_path names `dest`)
        out.flush()
        if digest.hexdigest() != sha256:
            raise DownloadError(
                f"content sha256 {digest.hexdigest()[:12]}... does not match {sha256[:12]}... "
                "(truncated, corrupt, or not the MNIST file)"
            )


def _from_folder(folder: str, name: str) -> Path:
    for candidate in (Path(folder) / f"{name}.gz", Path(folder) / name):
        if candidate.is_file():
            return candidate
    raise DownloadError(f"neither {name}.gz nor {name} in folder {folder}")


class _CappedWriter:
    """A file that refuses to grow past `cap` bytes: what pooch's downloader writes into."""

    def __init__(self, f: Any, cap: int, source: str) -> None:
        self.f, self.cap, self.source, self.size = f, cap, source, 0

    def write(self, chunk: bytes) -> int:
        self.size += len(chunk)
        if self.size > self.cap:
            raise too_large(self.source, "the download", self.cap)
        return self.f.write(chunk)

    def __getattr__(self, name: str) -> Any:  # flush, seek, ...
        return getattr(self.f, name)


def _from_url(base_url: str, name: str, staging: Path, cfg: DownloadConfig) -> Path:
    import pooch  # imported here: it pulls in requests, which the other paths do not need
    import requests

    fname = f"{name}.gz"
    url = base_url.rstrip("/") + "/"
    fetcher = pooch.create(
        path=staging,
        base_url=url,
        registry={fname: None},
        retry_if_failed=cfg.retries,
        allow_updates=False,
    )

    class CappedDownloader(pooch.HTTPDownloader):
        """pooch's HTTP downloader, aborting past the cap (a TooLarge is not retried)."""

        def __call__(self, url: str, output_file: Any, pooch: Any, check_only: bool = False):
            if check_only or hasattr(output_file, "write"):
                return super().__call__(url, output_file, pooch, check_only)
            with open(output_file, "w+b") as f:
                return super().__call__(url, _CappedWriter(f, cfg.cap(name), url), pooch)

    downloader = CappedDownloader(progressbar=True, chunk_size=CHUNK, timeout=cfg.timeout)
    try:
        with reporting_disk_full(staging / fname):
            return Path(fetcher.fetch(fname, downloader=downloader))
    except (requests.RequestException, ValueError) as err:
        raise DownloadError(f"{type(err).__name__}: {err}") from None


def fetch_file(
    name: str, sha256: str, where: Sequence[str], out_dir: Path, cfg: DownloadConfig
) -> Path:
    """Put the verified, decompressed `name` in `out_dir`, trying each source in turn."""
    dest = out_dir / name
    failures: list[str] = []
    for source in where:
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".download-") as staging:
            try:
                if is_url(source):
                    archive = _from_url(source, name, Path(staging), cfg)
                else:
                    archive = _from_folder(source, name)
                unpack_verified(archive, dest, sha256, cfg.cap(name), source)
            except DownloadError as err:  # not a DiskFullError: no other source would help
                log.warning("%s from %s failed: %s", name, source, err)
                failures.append(f"  {source}: {err}")
                continue
        log.info("%s: verified from %s", name, source)
        return dest
    raise DownloadError(
        f"could not get {name} (sha256 of content {sha256}) from any source:\n"
        + "\n".join(failures)
        + "\nCheck your network, or download the file yourself and point $MNIST_MIRROR "
        "(or download.local_mirror in params.yaml) at the folder holding it."
    )


def download(cfg: DownloadConfig, out_dir: Path, env: Environment) -> list[Path]:
    """Fetch all files of `cfg` into `out_dir`, from the sources `env` adds to; returns their
    paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    where = sources(cfg, env)
    return [fetch_file(name, sha, where, out_dir, cfg) for name, sha in sorted(cfg.files.items())]


@stage_main
def main(argv: Sequence[str] | None = None) -> None:
    """CLI: `python -m digits.stages.download --params params.yaml --out data/raw`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--out", type=Path, required=True, help="folder for the IDX files")
    args = parser.parse_args(argv)
    download(load_params(args.params).download, args.out, Environment.read())


if __name__ == "__main__":
    main()
