"""The default probe set can tell a pre-trained encoder from a broken one (issue: probes that need the encoder).

On the offline MiniLM and ../shared/glue, with the protocol `capbench run --probes default` uses (corpus
without the fine-tuned task's sentences, here sst2's): the pre-trained reference must clear chance and its
own embeddings by the retention margin on every default probe, and both floor models (random weights; the
encoder linears zeroed, embeddings kept) must come out at a retention of at most 0.5 on each. Minutes of
CPU: marker `probevalidity`, `tox -e probevalidity`; outside the default run.
"""

from pathlib import Path

import pytest

pytestmark = [pytest.mark.probevalidity, pytest.mark.slow]

FLOOR_BAR = 0.5
FINE_TUNED_TASK = "sst2"  # the corpus leaves its sentences out, as for an sst2 cell


def test_default_probes_score_floor_models_at_most_half(
    tmp_path: Path, capsys, shared_glue, offline_model_dir
):
    from types import SimpleNamespace

    import torch

    from capbench.data.sources import detect_source
    from capbench.probing.options import DEFAULT_PROBES, ProbeOptions
    from capbench.probing.report import render_validity_table
    from capbench.probing.retention import retention
    from capbench.probing.runner_hook import cell_probes, probe_corpus, reference_and_floors

    torch.set_num_threads(2)
    source = detect_source(shared_glue)
    spec = SimpleNamespace(probes=DEFAULT_PROBES, task=FINE_TUNED_TASK)
    probes = cell_probes(spec)
    corpus = probe_corpus(SimpleNamespace(source=source), FINE_TUNED_TASK)
    reference, floors = reference_and_floors(
        str(offline_model_dir), probes, corpus, ProbeOptions(), source, tmp_path / "features"
    )
    with capsys.disabled():
        print("\n" + render_validity_table(reference, floors))
    own = retention(reference, reference)
    assert own["excluded"] == {}, f"the reference does not clear the margin on: {own['excluded']}"
    for name, result in floors.items():
        ret = retention(result, reference)
        for task, value in ret["summary"].items():
            assert value is not None and value <= FLOOR_BAR, f"{name} keeps {value:.3f} of {task}"
