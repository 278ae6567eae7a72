"""What makes a challenger the champion: the registry's decisions, the paired test and `RULE`,
as pure functions of test predictions (`registry` stores, locks and registers)."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from digits import PipelineError

RULE = (
    "a challenger takes the alias when it fixes more test digits than it breaks and McNemar's "
    "exact p < significance / k, k = the challengers tested against this champion since it was "
    "crowned, this one included (Bonferroni)"
)

PROMOTE_ENV = "DIGITS_PROMOTE"  # 0: register and compare, never take the champion alias


class PromoteEnvError(PipelineError):
    """$DIGITS_PROMOTE is neither on nor off."""


class Decision(enum.StrEnum):
    """What the registry did with an evaluated model."""

    FIRST = "first"  # the first version on its test data: takes the alias
    PROMOTED = "promoted"  # beat the champion: takes the alias
    KEPT = "kept"  # compared, not significantly better: the champion stays
    NOT_COMPARED = "not_compared"  # the champion has no predictions to pair with: it stays
    HELD_BACK = "held_back"  # would take the alias, but this run may not (promotion off)
    ALREADY_REGISTERED = "already_registered"  # the run is a version already: nothing new
    NOT_REGISTERED = "not_registered"  # the server refused this user the registry (403)

    @property
    def crowns(self) -> bool:
        """Whether the version takes the alias."""
        return self in (Decision.FIRST, Decision.PROMOTED)


@dataclass(frozen=True)
class Test:
    """One paired test: `b` test images the champion got right and the challenger wrong
    (broke), `c` the other way round (fixed), McNemar's exact two-sided p-value, and the level
    it had to beat: significance / `challengers` (this one included)."""

    b: int
    c: int
    p_value: float
    challengers: int = 1
    level: float | None = None


@dataclass(frozen=True)
class Challenger:
    """An evaluated model as the registry sees it: its run and logged model, its test
    predictions and how they were made."""

    run_id: str
    model_uri: str
    labels: np.ndarray
    probabilities: np.ndarray
    digest: str  # test_digest of the test images and labels
    signature: str  # the model's input signature
    shifts: int = 0  # evaluate.shifts the predictions were made with
    may_promote: bool = True  # False: compared and registered, never given the alias
    tags: Mapping[str, str] = field(default_factory=dict)  # on the new version

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


@dataclass(frozen=True)
class Registration:
    """A version registered by `evaluate`, and what the registry decided about it."""

    name: str  # the registered model it joined (not registered: the configured one)
    version: str | None  # None: not registered
    alias: str
    champion: bool  # whether it holds the alias now
    decision: Decision
    reason: str  # one sentence: why
    previous: str | None = None  # the champion version it was compared with
    previous_accuracy: float | None = None
    test: Test | None = None
    not_compared_with: str | None = None  # the configured registered model, when not its own


@dataclass(frozen=True)
class Champion:
    """The version holding the alias when a challenger arrives, with its stored predictions."""

    version: str
    predictions: dict[str, np.ndarray] | None
    challengers: int  # tested against it so far (that could have taken the alias)


@dataclass(frozen=True)
class Verdict:
    """`decide`'s answer."""

    decision: Decision
    reason: str
    test: Test | None = None


def test_digest(x: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the test images and labels themselves (not of the .npz, whose zip headers
    carry the time it was written), so the same test data always has the same digest."""
    digest = hashlib.sha256()
    for array in (np.ascontiguousarray(x, dtype=np.float32), np.asarray(labels, dtype=np.int64)):
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def mcnemar(labels: np.ndarray, champion: np.ndarray, challenger: np.ndarray) -> Test:
    """McNemar's exact test on paired predictions of the same test images: only the images
    exactly one model gets right count; under "equally good" each is the challenger's with
    probability 1/2, so the p-value is a two-sided binomial test of c successes in b + c."""
    from scipy.stats import binomtest

    if not (len(labels) == len(champion) == len(challenger)):
        raise ValueError("paired predictions must cover the same test images")
    right_before, right_now = champion == labels, challenger == labels
    b = int((right_before & ~right_now).sum())
    c = int((~right_before & right_now).sum())
    p_value = 1.0 if b + c == 0 else float(binomtest(c, b + c, 0.5).pvalue)
    return Test(b, c, p_value)


def promotes(test: Test, level: float) -> bool:
    """The challenger is better when it fixed more images than it broke and McNemar's test
    rejects "equally good" at `level`."""
    return test.c > test.b and test.p_value < level


def decide(challenger: Challenger, champion: Champion | None, significance: float) -> Verdict:
    """The registry's decision for `challenger` against the current `champion` (None: there
    is none on its test data), by `RULE`."""
    held = "; this run may not take the alias (promotion off)"
    if champion is None:
        first = f"the first version tested on data {challenger.digest[:8]}"
        return Verdict(Decision.FIRST, first) if challenger.may_promote else (
            Verdict(Decision.HELD_BACK, first + held)
        )  # fmt: skip
    before = champion.predictions
    if before is None or not np.array_equal(before["labels"], challenger.labels):
        return Verdict(
            Decision.NOT_COMPARED,
            f"champion version {champion.version} has no stored predictions on these test "
            "images to pair with; it stays",
        )
    k = champion.challengers + 1
    test = dataclasses.replace(
        mcnemar(challenger.labels, before["predicted"], challenger.predicted),
        challengers=k,
        level=significance / k,
    )
    won = promotes(test, significance / k)
    outcome = "better" if won else "not better" if test.c <= test.b else "not significant"
    reason = (
        f"fixed {test.c} and broke {test.b} of the champion's test digits; McNemar "
        f"p = {test.p_value:.3g} at level {significance} / {k} = {significance / k:.3g} "
        f"(challenger {k} of version {champion.version}): {outcome}; rule: {RULE}"
    )
    if not won:
        return Verdict(Decision.KEPT, reason, test)
    if not challenger.may_promote:
        return Verdict(Decision.HELD_BACK, reason + held, test)
    return Verdict(Decision.PROMOTED, reason, test)


def may_promote(environ: Mapping[str, str]) -> bool:
    """`DIGITS_PROMOTE` (default 1): 0 for runs that must not take the champion alias (the
    ladder's, the benchmarks'); they are still registered and compared."""
    value = environ.get(PROMOTE_ENV, "1").strip().lower()
    if value not in {"0", "1", "false", "true", "no", "yes", ""}:
        raise PromoteEnvError(f"{PROMOTE_ENV}={value!r}: use 1 (may take the alias) or 0")
    return value in {"1", "true", "yes", ""}
