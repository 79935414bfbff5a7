"""Fakes for the speed tests: a clock that only moves when told, load readings, and kernel / model costs
charged to that clock, so timing arithmetic is checked without the wall clock."""

from __future__ import annotations

import torch

from capbench.speed import formats as fm
from capbench.speed.kernels import iter_encoder_linears
from capbench.speed.load import LoadProbe


class FakeClock:
    """A clock that only moves when the timed functions say so."""

    def __init__(self):
        self.t = 0.0
        self.calls = []

    def __call__(self):
        return self.t

    def costing(self, name, costs):
        """A callable advancing the clock by the next of `costs` per call (the last one repeats)."""
        costs = list(costs)

        def fn():
            self.calls.append(name)
            self.t += costs.pop(0) if len(costs) > 1 else costs[0]

        return fn


class FakeProbe(LoadProbe):
    """Load readings scripted per phase: other processes' `other_cores` on top of this process's `own_cores`,
    over `seconds` of wall time per start/stop pair; `proc_stat=False` reads like a machine without it."""

    def __init__(self, other_cores=0.0, own_cores=2.0, seconds=10.0, loadavg=(0.1, 0.1, 0.1), proc_stat=True):
        self.other, self.own, self.seconds = other_cores, own_cores, seconds
        self.load, self.proc_stat = loadavg, proc_stat
        self.now = 0.0
        self.reads = 0

    def wall(self):
        self.reads += 1
        if self.reads % 2 == 0:  # every second reading ends a phase
            self.now += self.seconds
        return self.now

    def busy_cpu_seconds(self):
        return (self.other + self.own) * self.now if self.proc_stat else None

    def own_cpu_seconds(self):
        return self.own * self.now

    def loadavg(self):
        return self.load


def busy_probe() -> FakeProbe:
    """One CPU-bound process beside a 2-thread measurement: about a core taken."""
    return FakeProbe(other_cores=1.0)


def idle_probe() -> FakeProbe:
    return FakeProbe(other_cores=0.02)


class Costs:
    """Charges fake seconds to `clock`: every dense-, compact- and sparse-left-format (CSR, BSR) kernel call,
    every forward of an encoder nn.Linear of the models passed to `hook_dense`, and `other` seconds per
    forward of the models passed to `hook_model`. `phase` ("calibration" until a hooked model runs, then
    "model") picks the CSR cost, and `events` logs (phase, what) in call order."""

    def __init__(self, monkeypatch, clock: FakeClock, dense=1.0, csr=0.25, csr_in_model=None, other=3.0):
        self.clock, self.dense, self.other = clock, dense, other
        self.csr = {"calibration": csr, "model": csr if csr_in_model is None else csr_in_model}
        self.phase = "calibration"
        self.events: list[tuple[str, str]] = []
        self.inputs: list[tuple[int, int, tuple]] = []  # (out, in, stride) of every dense-format call
        dense_forward, sparse_forward = fm.DenseFormat._forward2d, fm._SparseLeftFormat._forward2d
        compact_forward = fm.CompactFormat._forward2d

        def dense_kernel(fmt, x):
            self.inputs.append((fmt.out_features, fmt.in_features, tuple(x.stride())))
            self._charge(self.dense, "dense kernel")
            return dense_forward(fmt, x)

        def sparse_kernel(fmt, x):
            self._charge(self.csr[self.phase], "sparse kernel")
            return sparse_forward(fmt, x)

        def compact_kernel(fmt, x):  # a dense matmul on what is left: as dense here, never chosen
            self._charge(self.dense, "compact kernel")
            return compact_forward(fmt, x)

        monkeypatch.setattr(fm.DenseFormat, "_forward2d", dense_kernel)
        monkeypatch.setattr(fm.CompactFormat, "_forward2d", compact_kernel)
        monkeypatch.setattr(fm._SparseLeftFormat, "_forward2d", sparse_kernel)

    def _charge(self, seconds, what):
        self.events.append((self.phase, what))
        self.clock.t += seconds

    def hook_dense(self, model):
        """Each encoder nn.Linear of `model` costs `dense` per forward."""
        for _, module in iter_encoder_linears(model):
            module.register_forward_pre_hook(lambda mod, args: self._charge(self.dense, "dense linear"))
        return model

    def hook_model(self, model):
        """Each forward of `model` (and of its copies) costs `other` and starts the "model" phase."""

        def pre(mod, args, kwargs):
            self.phase = "model"
            self._charge(self.other, "model forward")

        model.register_forward_pre_hook(pre, with_kwargs=True)
        return model


def prune(model, sparsity=0.9, seed=0):
    """Zero a random `sparsity` share of every encoder linear's weights (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in iter_encoder_linears(model):
            m.weight[torch.rand(m.weight.shape, generator=g) < sparsity] = 0
    return model
