"""Criteo-like click data with a planted ground truth, so that a model's AUC has a known ceiling.

Real CTR logs cannot say how far a model is from the best possible one. Here every label is
drawn from a logistic model of the observed features only, so the true probability of each
row is known and its AUC (:func:`bayes_auc`) is the most any model can score on that sample.

A row has 13 dense features (Criteo's integer counts: log-normal, some missing, stored as
``log1p(count)`` so that they are O(1)) and 26 categorical slots whose ids follow a power law
(``alpha``) over Criteo-like cardinalities (up to ten million; :func:`criteo_cardinalities`
scales them down for tests). The planted logit is a bias (set so that about ``positive_rate``
of the labels are 1), a linear term and a few products of the dense features, one effect per
(slot, id) and one per id pair of a few slot pairs. Effects are hashed from (seed, slot, id),
never stored: a table would be as large as the cardinalities, and a hash lets every shard be
made alone, in O(rows) memory, from (seed, shard) only.

``hashed=True`` only renames the ids: each (slot, id) becomes a fixed 64-bit mix of the two,
spread over the non-negative int64 range as a dynamic (hash) table sees ids. The labels and
probabilities are the same as without it. At the defaults the Bayes AUC is about 0.80 (the
best published Criteo models score about 0.80-0.81) and the positive rate 0.25.

Shard k of the train split is stream k (test: ``TEST_STREAM + k``) of ``shard_rows`` rows, so
it is the same whichever other shards are made, or in which process.

Written to disk as ``npy`` shards by :func:`pscluster.data.synthetic_ctr_npy.write_npy`.
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pscluster.model.auc import rank_auc as rank_auc  # the planted ceiling is measured by it

# Criteo Kaggle (Display Advertising Challenge) ids per categorical slot, as counted by DLRM.
CRITEO_CARDINALITIES = (
    *(1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194),
    *(27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572),
)
DENSE = 13
CHUNK = 1 << 15  # rows drawn at once: temporaries stay a few MB whatever ``rows`` is
TEST_STREAM = 1 << 31  # test shards use streams from here, so no shard repeats a train shard
_MAX_CARDINALITY = 1 << 31  # a * rank stays below 2**62 in the rank -> id bijection
_TAGS = {"plan": 1, "stream": 2, "calibrate": 3}
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def criteo_cardinalities(scale: float = 1.0) -> tuple[int, ...]:
    """Criteo's cardinalities times ``scale`` (at least 2 ids a slot): 1e-3 gives tiny tables."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return tuple(max(2, round(c * scale)) for c in CRITEO_CARDINALITIES)


@dataclass(frozen=True)
class CtrSpec:
    """What is generated; hashable, so its derived constants are computed once per spec.

    The ``*_scale`` fields are the standard deviations of the planted effects: per dense
    weight, per (slot, id), per id pair of ``pairs`` (slot indices) and per dense product.
    """

    seed: int = 0
    cardinalities: tuple[int, ...] = CRITEO_CARDINALITIES
    alpha: float = 1.1
    hashed: bool = False
    pairs: tuple[tuple[int, int], ...] = ((0, 1), (4, 8), (13, 19), (6, 16))
    positive_rate: float = 0.25
    dense_scale: float = 0.15
    slot_scale: float = 0.2
    pair_scale: float = 0.3
    dense_pair_scale: float = 0.15

    def __post_init__(self) -> None:
        # lists (from JSON or a caller) become tuples: the spec must stay hashable
        object.__setattr__(self, "cardinalities", tuple(int(c) for c in self.cardinalities))
        object.__setattr__(self, "pairs", tuple((int(a), int(b)) for a, b in self.pairs))
        slots = len(self.cardinalities)
        if slots < 1 or not all(2 <= c <= _MAX_CARDINALITY for c in self.cardinalities):
            raise ValueError(
                f"cardinalities must be one or more ints in [2, 2**31], got {self.cardinalities}"
            )
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0 (a power law's exponent), got {self.alpha}")
        if not 0 < self.positive_rate < 1:
            raise ValueError(f"positive_rate must be in (0, 1), got {self.positive_rate}")
        for a, b in self.pairs:
            if not (0 <= a < slots and 0 <= b < slots and a != b):
                raise ValueError(f"pair {(a, b)} must name two different slots of 0..{slots - 1}")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "pairs": [list(p) for p in self.pairs]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CtrSpec:
        """The spec a manifest recorded."""
        return cls(**data)


@dataclass(frozen=True)
class CtrBatch:
    """Rows of features, their labels and the true probabilities the labels were drawn from."""

    dense: np.ndarray  # (n, 13) float32
    sparse: np.ndarray  # (n, slots) int64
    label: np.ndarray  # (n,) float32, 0 or 1
    prob: np.ndarray  # (n,) float32


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 in which every output bit depends on
    every input bit, so nearby ids get unrelated effects."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    mixed: np.ndarray = x ^ (x >> np.uint64(31))
    return mixed


def _hash(key: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Hash of (key, id): injective in id for a key (odd multiplier, then a bijection)."""
    return _mix(key + ids.astype(np.uint64) * _GOLDEN)


@functools.lru_cache(maxsize=1)
def _quantiles() -> np.ndarray:
    """The standard normal's quantiles at 2**16 evenly spaced levels."""
    inv_cdf = statistics.NormalDist().inv_cdf
    return np.array([inv_cdf((i + 0.5) / 65536) for i in range(65536)])


def _gaussian(h: np.ndarray) -> np.ndarray:
    """A standard normal from each hash: its top 16 bits index the normal's quantiles. A
    lookup in a table that stays in cache, where Box-Muller's log, sqrt and cos took most of
    the generation time; 65536 levels are finer than any effect a model could learn."""
    return _quantiles()[(h >> np.uint64(48)).astype(np.intp)]


def zipf_ranks(u: np.ndarray, cardinalities: np.ndarray, alpha: float) -> np.ndarray:
    """Uniforms in [0, 1) to ranks in [0, N) with P(rank r) ~ (r + 1) ** -alpha.

    The inverse CDF of a Pareto density x ** -alpha bounded to [1, N + 1), floored: O(1) per
    draw, where a table of the N probabilities would take 80 MB for a 10M-id slot.
    """
    log_m = np.log(np.asarray(cardinalities, dtype=np.float64) + 1.0)
    s = 1.0 - alpha
    log_x = u * log_m if s == 0 else np.log1p(u * np.expm1(s * log_m)) / s
    ranks = np.floor(np.exp(log_x)).astype(np.int64) - 1
    clipped: np.ndarray = np.clip(ranks, 0, np.asarray(cardinalities, dtype=np.int64) - 1)
    return clipped


@dataclass(frozen=True)
class _Plan:
    """The constants a spec implies, drawn once from its seed."""

    sizes: np.ndarray  # (slots,) int64
    mult: np.ndarray  # (slots,) int64, coprime with sizes: rank -> id is a bijection
    shift: np.ndarray  # (slots,) int64
    slot_keys: np.ndarray  # (slots,) uint64
    pair_keys: np.ndarray  # (pairs,) uint64
    mu: np.ndarray  # (13,) log-count means
    sd: np.ndarray  # (13,) log-count deviations
    missing: np.ndarray  # (13,) chance that a count is missing (0 after log1p)
    weights: np.ndarray  # (13,)
    dense_pairs: np.ndarray  # (3, 2) feature indices
    dense_pair_weights: np.ndarray  # (3,)


@functools.lru_cache(maxsize=32)
def _plan(spec: CtrSpec) -> _Plan:
    rng = np.random.default_rng([spec.seed, _TAGS["plan"]])
    sizes = np.asarray(spec.cardinalities, dtype=np.int64)
    mult = []
    for n in spec.cardinalities:
        a = int(rng.integers(1, n)) if n > 2 else 1
        while math.gcd(a, n) != 1:
            a = a % (n - 1) + 1
        mult.append(a)
    keys = rng.integers(0, 2**63, len(sizes) + len(spec.pairs), dtype=np.int64)
    return _Plan(
        sizes=sizes,
        mult=np.asarray(mult, dtype=np.int64),
        shift=(rng.random(len(sizes)) * sizes).astype(np.int64),
        slot_keys=keys[: len(sizes)].astype(np.uint64),
        pair_keys=keys[len(sizes) :].astype(np.uint64),
        mu=rng.uniform(0.5, 4.0, DENSE),
        sd=rng.uniform(0.8, 1.6, DENSE),
        missing=rng.uniform(0.0, 0.4, DENSE),
        weights=rng.standard_normal(DENSE) * spec.dense_scale,
        dense_pairs=np.stack([rng.choice(DENSE, 2, replace=False) for _ in range(3)]),
        dense_pair_weights=rng.standard_normal(3) * spec.dense_pair_scale,
    )


def _draw(spec: CtrSpec, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Dense features (float32) and raw ids in [0, cardinality) for ``n`` rows."""
    plan = _plan(spec)
    z = rng.standard_normal((n, DENSE)) * plan.sd + plan.mu
    value = np.log1p(np.floor(np.exp(z)))
    value[rng.random((n, DENSE)) < plan.missing] = 0.0
    ranks = zipf_ranks(rng.random((n, len(plan.sizes))), plan.sizes, spec.alpha)
    return value.astype(np.float32), (plan.mult * ranks + plan.shift) % plan.sizes


def _score(spec: CtrSpec, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The planted logit less its bias: a function of the stored features only, so that the
    probability it gives is the true one, not one that also knows hidden variables."""
    plan = _plan(spec)
    d = (dense.astype(np.float64) - plan.mu) / plan.sd
    logit: np.ndarray = d @ plan.weights
    for (i, j), w in zip(plan.dense_pairs, plan.dense_pair_weights, strict=True):
        logit += w * d[:, i] * d[:, j]
    logit += spec.slot_scale * _gaussian(_hash(plan.slot_keys, ids)).sum(axis=1)
    for (a, b), key in zip(spec.pairs, plan.pair_keys, strict=True):
        logit += spec.pair_scale * _gaussian(_hash(_hash(key, ids[:, a]), ids[:, b]))
    return logit


def _sigmoid(x: np.ndarray) -> np.ndarray:
    p: np.ndarray = np.exp(-np.logaddexp(0.0, -x))  # 1 / (1 + e**-x) with no overflow
    return p


@functools.lru_cache(maxsize=32)
def planted_bias(spec: CtrSpec) -> float:
    """The bias that makes the mean probability ``spec.positive_rate``, on 2 * CHUNK rows of a
    stream of their own: the rate is then within about 0.002 of the target."""
    rng = np.random.default_rng([spec.seed, _TAGS["calibrate"]])
    score = np.concatenate([_score(spec, *_draw(spec, CHUNK, rng)) for _ in range(2)])
    lo, hi = -30.0, 30.0
    for _ in range(60):  # the mean probability rises with the bias: bisect
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _sigmoid(score + mid).mean() < spec.positive_rate else (lo, mid)
    return (lo + hi) / 2


def _present(spec: CtrSpec, ids: np.ndarray) -> np.ndarray:
    """Ids as stored: raw, or (slot, id) mixed into [0, 2**63) with fixed slot keys."""
    if not spec.hashed:
        return ids
    slots = np.arange(1, ids.shape[1] + 1, dtype=np.uint64)
    return (_hash(_mix(slots * _GOLDEN), ids) >> np.uint64(1)).astype(np.int64)


def generate(spec: CtrSpec, rows: int, stream: int | np.random.Generator) -> CtrBatch:
    """``rows`` rows of stream ``stream`` (a shard number, or a generator of your own): the
    same (spec, stream, rows) always give the same rows, whichever other streams are made."""
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    if isinstance(stream, np.random.Generator):
        rng = stream
    elif stream >= 0:
        rng = np.random.default_rng([spec.seed, _TAGS["stream"], stream])
    else:
        raise ValueError(f"stream must be a generator or an int >= 0, got {stream}")
    slots, bias = len(spec.cardinalities), planted_bias(spec)
    out = CtrBatch(
        dense=np.empty((rows, DENSE), dtype=np.float32),
        sparse=np.empty((rows, slots), dtype=np.int64),
        label=np.empty(rows, dtype=np.float32),
        prob=np.empty(rows, dtype=np.float32),
    )
    for start in range(0, rows, CHUNK):
        end = min(rows, start + CHUNK)
        dense, ids = _draw(spec, end - start, rng)
        prob = _sigmoid(_score(spec, dense, ids) + bias)
        out.dense[start:end] = dense
        out.sparse[start:end] = _present(spec, ids)
        out.label[start:end] = rng.random(end - start) < prob
        out.prob[start:end] = prob
    return out


def bayes_auc(batch: CtrBatch) -> float:
    """The AUC of the true probabilities on these rows: no model can expect to score more."""
    return rank_auc(batch.label, batch.prob)
