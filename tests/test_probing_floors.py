"""Floor models, the default probe set and which probes a cell runs: what keeps probes honest."""

from types import SimpleNamespace

import pytest
import torch

from capbench.errors import CapbenchError
from capbench.layout import Layout
from capbench.measure import needs_probes
from capbench.probing.floors import random_weights, zeroed_encoder
from capbench.probing.options import DEFAULT_PROBES, expand_probe_names, split_probe_names
from capbench.probing.runner_hook import cell_probes, result_names
from capbench.testing import tiny_bert


def test_zeroed_encoder_zeroes_every_encoder_linear_weight_and_nothing_else():
    model = tiny_bert(seed=0)
    zeroed = zeroed_encoder(model)
    linears = Layout(zeroed).linears()
    assert len(linears) == 6 * model.config.num_hidden_layers
    assert all(int(torch.count_nonzero(m.weight)) == 0 for _, m in linears)
    originals = dict(Layout(model).linears())
    assert all(torch.equal(m.bias, originals[n].bias) for n, m in linears)  # biases kept, as 100% sparsity
    emb = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(zeroed.state_dict()[emb], model.state_dict()[emb])
    assert all(int(torch.count_nonzero(m.weight)) for _, m in Layout(model).linears())  # original untouched


def test_random_weights_is_a_fresh_seeded_model_of_the_same_architecture():
    model = tiny_bert(seed=3)  # stands for the pre-trained model (FLOOR_SEED is 0)
    state = torch.random.get_rng_state()
    a, b = random_weights(model), random_weights(model)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is left alone
    assert a.config.to_dict() == model.config.to_dict()
    emb = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(a.state_dict()[emb], b.state_dict()[emb])
    assert not torch.equal(a.state_dict()[emb], model.state_dict()[emb])


def test_default_probe_set_expands_and_a_cell_never_probes_its_own_task():
    assert expand_probe_names(["default", "bigram_shift"]) == list(DEFAULT_PROBES)
    generated, transfer = split_probe_names(["default"])
    assert generated == ["bigram_shift"] and transfer == ["qnli", "qqp"]
    probes = cell_probes(SimpleNamespace(probes=DEFAULT_PROBES, task="qqp"))
    assert result_names(probes) == ["bigram_shift", "qnli"]
    with pytest.raises(CapbenchError, match="or 'default'"):
        split_probe_names(["defaults"])


def test_records_probed_before_the_floors_are_probed_again():
    spec = SimpleNamespace(
        probes=("bigram_shift", "transfer:sst2"), task="rte", speed=False, method="magnitude"
    )
    current = {"probes": {"tasks": {"bigram_shift": {}, "sst2": {}}, "floors": {}}}
    assert not needs_probes(spec, current)
    assert needs_probes(spec, {"probes": {"tasks": {"bigram_shift": {}, "sst2": {}}}})  # no floors: old
    own = SimpleNamespace(
        probes=("bigram_shift", "transfer:rte"), task="rte", speed=False, method="magnitude"
    )
    assert not needs_probes(own, {"probes": {"tasks": {"bigram_shift": {}}, "floors": {}}})
