""""None of the above": how far an image's pooled features lie from the training images' features.

The score is the cosine distance to the k-th nearest training image (Sun et al., 2022, "Out-of-distribution
detection with deep nearest neighbors"). Chosen by measurement on hymenoptera (bench/trust_bench.py): with k = 5
it flagged every unfamiliar image at 2 % false flags of held-out ants and bees, where a Mahalanobis distance with a
Ledoit-Wolf covariance managed 40 % and the top softmax probability 4 %. The training features are kept in the
model (at most MAX_BANK of them, float16), and the rejection threshold is a quantile of the training images'
leave-one-out scores: each scored against the others, as an unseen image would be. Pure numpy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

K = 5
QUANTILE = 0.985  # of the leave-one-out training scores: about 1.5-2 % of familiar images are flagged
MAX_BANK = 4096  # training feature vectors kept in the model (a random subset past it): 4096 x 1280 fp16 = 10 MB
_CHUNK = 1024


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class KNNScorer:
    """Unit-norm training features and the threshold above which a score means "unlike the training images"."""

    bank: np.ndarray  # (M, D) float32, unit rows
    k: int
    threshold: float
    quantile: float

    def score(self, features: np.ndarray, leave_one_out: bool = False) -> np.ndarray:
        """1 - cosine similarity to the k-th nearest bank row (leave_one_out: features are the bank itself)."""
        x = _unit(features)
        k = min(self.k + int(leave_one_out), len(self.bank))
        out = np.empty(len(x), dtype=np.float32)
        for start in range(0, len(x), _CHUNK):  # bounded memory: a chunk of rows against the whole bank
            sims = x[start : start + _CHUNK] @ self.bank.T
            out[start : start + _CHUNK] = 1.0 - np.partition(sims, -k, axis=1)[:, -k]
        return out

    def meta(self) -> dict[str, Any]:
        """What the model's metadata says about the scorer (the bank itself travels as a tensor)."""
        return {"method": "knn_cosine", "k": self.k, "threshold": round(float(self.threshold), 6),
                "quantile": self.quantile, "bank_size": int(len(self.bank))}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], bank: np.ndarray) -> "KNNScorer":
        """Rebuild a scorer from meta() and its stored bank."""
        return cls(_unit(bank), int(meta["k"]), float(meta["threshold"]), float(meta["quantile"]))


def fit_knn(features: np.ndarray, k: int = K, quantile: float = QUANTILE, max_bank: int = MAX_BANK,
            seed: int = 0) -> KNNScorer:
    """A scorer on these training features; threshold = quantile of their leave-one-out scores."""
    if len(features) > max_bank:  # subsample first: never a unit-norm copy of every feature
        features = features[np.sort(np.random.default_rng(seed).choice(len(features), max_bank, replace=False))]
    bank = _unit(features)
    k = max(1, min(k, len(bank) - 1))
    scorer = KNNScorer(bank, k, 0.0, quantile)
    # A row's nearest neighbour in the bank is itself (similarity 1): asking for the (k+1)-th leaves it out.
    scorer.threshold = float(np.quantile(scorer.score(bank, leave_one_out=True), quantile))
    return scorer
