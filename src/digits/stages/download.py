"""Stage `download`: the four IDX files into `data/raw/`, each verified before it lands.

Sources are tried in order: the folder in $MNIST_MIRROR, then `download.local_mirror`, then the
public `download.mirrors`. Each file is checked against the sha256 of its *decompressed* content,
so any faithful mirror passes and `data/raw/` is byte-identical whichever one served it. Transport
(retries with back-off, timeouts, progress bars) is pooch's; a file is renamed into place only
after its hash matches, so a failed run leaves nothing a later run would trust.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import logging
import os
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from digits import PipelineError
from digits.lib.cli import stage_main
from digits.lib.config import DownloadConfig, load_params
from digits.lib.files import atomic_path

log = logging.getLogger(__name__)

MIRROR_ENV = "MNIST_MIRROR"
CHUNK = 1 << 20


class DownloadError(PipelineError):
    """No source produced a file with the expected content."""


def sources(cfg: DownloadConfig, env: dict[str, str] | None = None) -> list[str]:
    """Where to look, in order: $MNIST_MIRROR, `local_mirror`, then the public mirrors."""
    env = os.environ if env is None else env
    root = env.get("DVC_ROOT")  # relative folders mean the project's, also in `dvc exp --temp`
    local = [
        str(Path(root) / s) if root and "://" not in s and not Path(s).is_absolute() else s
        for s in (env.get(MIRROR_ENV), cfg.local_mirror)
        if s
    ]
    return list(dict.fromkeys([*local, *cfg.mirrors]))


def is_url(source: str) -> bool:
    """True for http(s)/ftp mirrors, False for a local folder."""
    return source.split("://", 1)[0] in {"http", "https", "ftp"}


def unpack_verified(archive: Path, dest: Path, sha256: str) -> None:
    """Decompress `archive` (gzip or plain) to `dest`, atomically, if its content matches."""
    digest = hashlib.sha256()
    with open(archive, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with atomic_path(dest) as tmp, opener(archive, "rb") as src, open(tmp, "wb") as out:
        try:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        except (OSError, EOFError, zlib.error) as err:
            raise DownloadError(f"corrupt gzip data ({err})") from None
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


def _from_url(base_url: str, name: str, staging: Path, cfg: DownloadConfig) -> Path:
    import pooch  # imported here: it pulls in requests, which the other paths do not need
    import requests

    fname = f"{name}.gz"
    fetcher = pooch.create(
        path=staging,
        base_url=base_url.rstrip("/") + "/",
        registry={fname: None},
        retry_if_failed=cfg.retries,
        allow_updates=False,
    )
    downloader = pooch.HTTPDownloader(progressbar=True, chunk_size=CHUNK, timeout=cfg.timeout)
    try:
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
                unpack_verified(archive, dest, sha256)
            except DownloadError as err:
                log.warning("%s from %s failed: %s", name, source, err)
                failures.append(f"  {source}: {err}")
                continue
        log.info("%s: verified from %s", name, source)
        return dest
    raise DownloadError(
        f"could not get {name} (sha256 of content {sha256}) from any source:\n"
        + "\n".join(failures)
        + f"\nCheck your network, or download the file yourself and point ${MIRROR_ENV} "
        "(or download.local_mirror in params.yaml) at the folder holding it."
    )


def download(cfg: DownloadConfig, out_dir: Path, env: dict[str, str] | None = None) -> list[Path]:
    """Fetch all files of `cfg` into `out_dir`; returns their paths."""
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
    download(load_params(args.params).download, args.out)


if __name__ == "__main__":
    main()
