"""The running average over calibration batches that Wanda's and SparseGPT's input statistics share.

Both reference codes keep a statistic S of a linear layer's inputs as a running mean over calibration
samples (locuslab/wanda ``WrappedGPT.add_batch``, IST-DASLab/sparsegpt ``SparseGPT.add_batch``):
``S *= n/(n+tmp); n += tmp; S += f(x) / n`` for a batch x of ``tmp`` samples.  Subclasses give f.
"""

from __future__ import annotations

import torch


class RunningInputStat:
    """A running mean over samples of a statistic of one linear layer's inputs (float32, on the inputs'
    device); ``value`` is the statistic, ``samples`` and ``tokens`` what it has seen."""

    def __init__(self, in_features: int, shape: tuple[int, ...]):
        self.in_features = int(in_features)
        self.value = torch.zeros(shape, dtype=torch.float32)
        self.samples = 0
        self.tokens = 0

    def contribution(self, x: torch.Tensor) -> torch.Tensor:
        """f(x): this batch's sum over tokens (before the division by the samples seen)."""
        raise NotImplementedError

    def add(self, x: torch.Tensor, samples: int = 1) -> None:
        """Add one batch ``x`` of shape (tokens, in_features), any float dtype, real tokens only;
        ``samples``: the calibration samples (sequences) it holds, the references' ``tmp``.
        Raises ValueError on a wrong shape or ``samples < 1``."""
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"expected inputs of shape (tokens, {self.in_features}), got {tuple(x.shape)}")
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        x = x.detach().to(torch.float32)
        if self.value.device != x.device:
            self.value = self.value.to(x.device)
        self.value *= self.samples / (self.samples + samples)
        self.samples += int(samples)
        self.value += self.contribution(x) / self.samples
        self.tokens += int(x.shape[0])
