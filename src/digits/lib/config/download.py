"""The `download:` section: where the four IDX files come from and what they must hash to."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from digits.lib.config.fields import Sha256, Strict

IDX_KINDS = ("images-idx3-ubyte", "labels-idx1-ubyte")
# Real MNIST's decompressed sizes in bytes: the download is capped at these plus a margin
MNIST_SIZES = {
    "train-images-idx3-ubyte": 47_040_016,
    "train-labels-idx1-ubyte": 60_008,
    "t10k-images-idx3-ubyte": 7_840_016,
    "t10k-labels-idx1-ubyte": 10_008,
}


class DownloadConfig(Strict):
    """Where the four IDX files come from and what their decompressed content must hash to."""

    mirrors: list[str] = Field(
        min_length=1,
        description="Base URLs of public mirrors, tried in order after $MNIST_MIRROR and "
        "`local_mirror`; each holds the four `.gz` files.",
    )
    local_mirror: str | None = Field(
        default=None,
        description="A folder holding the four `.gz` files, for machines without internet "
        "(null: none).",
    )
    files: dict[str, Sha256] = Field(
        min_length=4,
        max_length=4,
        description="sha256 (64 lowercase hex digits) of each file's decompressed content, "
        "keyed by the four MNIST file names; a file that does not match is refused.",
    )
    retries: int = Field(
        default=2, ge=0, le=10, description="Retries per mirror, with back-off, 0 to 10."
    )
    timeout: float = Field(default=60.0, gt=0, description="Seconds per request.")
    sizes: dict[str, Annotated[int, Field(gt=0, le=2**40)]] = Field(
        default=dict(MNIST_SIZES),
        description="Bytes of each file's decompressed content (real MNIST's), keyed by the "
        "four file names: the cap on what is downloaded and decompressed.",
    )
    size_margin: float = Field(
        default=0.1,
        ge=0,
        le=10,
        description="A download, or its decompression, that runs past sizes x (1 + margin) "
        "is aborted (0.1: 10% over).",
    )

    @model_validator(mode="after")
    def _canonical_names(self) -> DownloadConfig:
        expected = {f"{split}-{kind}" for split in ("train", "t10k") for kind in IDX_KINDS}
        if set(self.files) != expected:
            raise ValueError(f"files must name exactly {sorted(expected)}")
        if set(self.sizes) != expected:
            raise ValueError(f"sizes must name exactly {sorted(expected)}")
        return self

    def cap(self, name: str) -> int:
        """The most bytes `name` may take, downloaded or decompressed."""
        return int(self.sizes[name] * (1 + self.size_margin)) + 4096  # + gzip's own header
