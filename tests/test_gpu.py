"""The same assertions on every available device: ``cpu`` always, ``cuda`` where present (marker ``gpu``;
``benchmarks/gpu_check.py`` runs ``pytest -m gpu`` on a GPU machine).  Tiny random models, a few steps.

Needs only torch, transformers and capbench (no ``datasets``): the GPU machine has no ``datasets``.
"""

import time

import pytest
import torch
import torch.nn.functional as F

from capbench.cap.config import CapConfig
from capbench.cap.loss import CapContext, CapLoss
from capbench.device import loader_options, resolve_device
from capbench.pruning.pruners import make_pruner
from capbench.speed.formats import CHECK_TOLERANCE, KernelFormat, _check, build_formats, is_2to4
from capbench.speed.kernels import iter_encoder_linears, time_formats
from capbench.speed.timing import Rounds, resolve_clock
from capbench.testing import synthetic_split, tiny_bert, tiny_tokenizer
from capbench.training import TrainConfig, eval_loader, make_loader, predict, train

CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")],
)
DEVICES = ["cpu", CUDA]


def _rows(tokenizer_dir, rows=48, seed=0):
    tokenizer = tiny_tokenizer(tokenizer_dir)
    model = tiny_bert(2)
    return tokenizer, synthetic_split(rows, model.config.vocab_size, 2, (6, 20), seed=seed)


@pytest.mark.parametrize("device", DEVICES)
def test_2to4_masked_training_in_bf16_stays_on_the_device_and_keeps_the_pattern(device, tmp_path):
    where = resolve_device(device)
    tokenizer, rows = _rows(tmp_path)
    model = tiny_bert(2).to(where)
    loader = make_loader(rows, tokenizer, 8, shuffle=True, seed=0, device=where)
    pruner = make_pruner("magnitude", 0.5, {"pattern": "2:4"})
    stats = train(model, loader, TrainConfig(max_steps=8, batch_size=8, precision="bf16"), pruner=pruner)
    model = pruner.finalize(model)
    assert stats["steps"] == 8
    for name, module in iter_encoder_linears(model):
        assert module.weight.device.type == where.type, name
        assert module.weight.dtype == torch.float32, name  # autocast: weights stay fp32
        assert is_2to4(module.weight), name
        assert float((module.weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-6), name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("on_host", [False, True])
def test_cap_banks_follow_the_model_unless_kept_on_the_host(device, on_host, tmp_path):
    where = resolve_device(device)
    tokenizer, rows = _rows(tmp_path)
    torch.manual_seed(0)
    model, teacher = tiny_bert(2).to(where), tiny_bert(2, seed=1).to(where).eval()
    bank_loader, _ = eval_loader(rows, tokenizer, 16, where)
    config = CapConfig.from_options({"bank_on_host": on_host, "snapshot_on": "steps", "snapshot_interval": 2})
    loss = CapLoss(model, config, CapContext(teacher=teacher, loader=bank_loader, seed=0))
    expected = "cpu" if on_host else where.type
    assert {bank.device.type for bank in loss.banks.values()} == {expected}
    loader = make_loader(rows, tokenizer, 8, shuffle=True, seed=0, device=where)
    stats = train(
        model,
        loader,
        TrainConfig(max_steps=5, batch_size=8),
        loss_fn=loss,
        pruner=make_pruner("magnitude", 0.5),
    )
    assert stats["steps"] == 5
    assert len(loss.snapshots) >= 1  # SnC banks captured during training live where the others do
    assert {bank.device.type for bank in loss.snapshots.banks} == {expected}
    assert all(torch.isfinite(torch.as_tensor(v)) for v in stats["final_loss_terms"].values())
    assert ("bank_on_host" in config.to_dict()) == on_host  # the default leaves earlier digests alone
    loss.close()


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_formats_on_the_device_agree_with_dense_and_a_wrong_one_is_caught(device):
    where = resolve_device(device)
    dtype = torch.bfloat16 if where.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 128, generator=g)
    from capbench.pruning.base import pattern_mask

    weight = (weight * pattern_mask(weight.abs(), 0.5, "2:4")).to(where, dtype)
    bias = torch.randn(64, generator=g).to(where, dtype)
    formats = build_formats(weight, bias)
    assert formats["csr"].available, formats["csr"].reason
    semi = formats["semi_structured_2to4"]
    if where.type == "cuda" and torch.cuda.get_device_capability(where)[0] >= 8:
        assert semi.available, semi.reason
    elif where.type == "cpu":
        assert not semi.available and "CUDA only" in semi.reason
    x = torch.randn(32, 128, generator=g).to(where, dtype)
    ref = F.linear(x, weight, bias).float()
    tolerance = CHECK_TOLERANCE[dtype] * max(1.0, float(ref.abs().max()))
    for name, fmt in formats.items():
        if fmt.available:
            assert torch.allclose(fmt(x).float(), ref, atol=tolerance, rtol=CHECK_TOLERANCE[dtype]), name

    class Off(KernelFormat):  # a kernel 10% off: the self-check must refuse it in every dtype
        name = "off"

        def _forward2d(self, x):
            return F.linear(x, weight * 1.1, bias)

    assert not _check(Off(*weight.shape), weight, bias).available
    timed = time_formats(formats, ["4x8"], Rounds(repeats=3, min_repeats=3, warmup=1))
    assert all(row["median_s"] > 0 for row in timed["4x8"]["results"].values())


@pytest.mark.parametrize("device", DEVICES)
def test_the_default_clock_waits_for_work_queued_on_the_device(device):
    where = resolve_device(device)
    a = torch.randn(1024, 1024, device=where)
    clock = resolve_clock(None)
    if where.type == "cpu" and not torch.cuda.is_available():
        assert clock is time.perf_counter
    start = clock()
    for _ in range(20):
        a = a @ a / 32.0
    stop = clock()
    assert stop > start
    if where.type == "cuda":
        assert torch.cuda.current_stream(where).query()  # every queued kernel finished before the reading


@pytest.mark.parametrize("device", DEVICES)
def test_loaders_pin_memory_on_a_gpu_and_give_the_same_batches_everywhere(device, tmp_path, monkeypatch):
    where = resolve_device(device)
    monkeypatch.setenv("CAPBENCH_LOADER_WORKERS", "2")
    options = loader_options(where)
    assert options == (
        {}
        if where.type == "cpu"
        else {"pin_memory": True, "num_workers": 2, "persistent_workers": True, "prefetch_factor": 4}
    )
    tokenizer, rows = _rows(tmp_path)
    here = [
        b["idx"].tolist()
        for b in make_loader(rows, tokenizer, 8, True, seed=3, group_by_length=True, device=where)
    ]
    there = [b["idx"].tolist() for b in make_loader(rows, tokenizer, 8, True, seed=3, group_by_length=True)]
    assert here == there
    monkeypatch.setenv("CAPBENCH_LOADER_WORKERS", "many")
    if where.type == "cuda":
        with pytest.raises(Exception, match="CAPBENCH_LOADER_WORKERS='many': expected a whole number"):
            loader_options(where)


@pytest.mark.parametrize("device", DEVICES)
def test_evaluation_on_the_device_matches_the_cpu(device, tmp_path):
    where = resolve_device(device)
    tokenizer, rows = _rows(tmp_path)
    model = tiny_bert(2)
    loader, _ = eval_loader(rows, tokenizer, 16)
    cpu_logits, labels = predict(model, loader)
    device_logits, device_labels = predict(model.to(where), eval_loader(rows, tokenizer, 16, where)[0])
    assert (labels == device_labels).all()
    assert abs(cpu_logits - device_logits).max() < 1e-4
