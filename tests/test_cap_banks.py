import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from capbench.cap.banks import MemoryBank, SnapshotBanks, build_bank, load_or_build_bank
from capbench.cap.representation import model_inputs, represent
from capbench.errors import CapbenchError
from capbench.testing import tiny_bert


def tiny_train_set(model, n=20, seq_len=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(5, model.config.vocab_size, (seq_len,), generator=g)
        ids[0] = 2
        mask = torch.ones(seq_len, dtype=torch.long)
        mask[seq_len - (i % 3) :] = 0
        rows.append({"idx": i, "input_ids": ids, "attention_mask": mask, "labels": i % 2})
    return rows


def collate(rows):
    return {k: torch.stack([torch.as_tensor(r[k]) for r in rows]) for k in rows[0]}


def loader_for(model, n=20, batch_size=8, shuffle=False):
    return DataLoader(tiny_train_set(model, n), batch_size=batch_size, shuffle=shuffle, collate_fn=collate)


def test_fp16_bank_update_get_and_round_trip(tmp_path):
    bank = MemoryBank(10, 4)
    reps = torch.nn.functional.normalize(torch.randn(10, 4), dim=-1)
    bank.update(torch.arange(10), reps, labels=torch.arange(10) % 3)
    assert bank.dtype == torch.float16 and bank.complete
    assert bank.nbytes == 10 * 4 * 2 + 10 * 8
    got = bank.get(torch.tensor([3, 1]))
    assert got.dtype == torch.float16
    assert torch.allclose(got.float(), reps[[3, 1]], atol=1e-3)
    bank.save(tmp_path / "b", meta={"task": "x"})
    for mmap in (False, True):
        loaded = MemoryBank.load(tmp_path / "b", mmap=mmap)
        assert loaded.dtype == torch.float16 and loaded.size == 10 and loaded.dim == 4
        assert torch.equal(loaded.get(torch.arange(10)), bank.get(torch.arange(10)))
        assert torch.equal(loaded.labels, torch.arange(10) % 3)
        assert loaded.meta["task"] == "x" and loaded.forward_examples == 0
        assert loaded.on_disk is mmap


def test_memmap_bank_lives_in_a_file(tmp_path):
    path = tmp_path / "bank.npy"
    bank = MemoryBank(6, 3, dtype="float16", path=path)
    bank.update(torch.tensor([5, 0]), torch.ones(2, 3))
    assert path.is_file() and bank.on_disk
    on_disk = np.load(path, mmap_mode="r")
    assert on_disk.dtype == np.float16 and on_disk[5].tolist() == [1.0, 1.0, 1.0]
    assert not bank.complete
    with pytest.raises(CapbenchError, match="incomplete"):
        bank.sample(2)


def test_update_rejects_bad_rows():
    bank = MemoryBank(4, 2)
    with pytest.raises(CapbenchError, match="out of range"):
        bank.update(torch.tensor([4]), torch.zeros(1, 2))
    with pytest.raises(CapbenchError, match="rows"):
        bank.update(torch.tensor([0]), torch.zeros(1, 3))


def test_sample_is_distinct_and_clamped():
    bank = MemoryBank(5, 2)
    bank.update(torch.arange(5), torch.zeros(5, 2))
    g = torch.Generator().manual_seed(0)
    idx = bank.sample(3, g)
    assert len(set(idx.tolist())) == 3
    assert sorted(bank.sample(4096, g).tolist()) == list(range(5))
    assert bank.sample(0, g).numel() == 0


def test_build_bank_matches_direct_forward_and_counts_passes():
    model = tiny_bert()
    model.train()
    loader = loader_for(model, n=20, batch_size=8)
    bank = build_bank(model, loader, "mean")
    assert model.training  # mode restored
    assert (bank.size, bank.dim, bank.forward_examples, bank.forward_passes) == (20, 32, 20, 3)
    assert bank.meta["kind"] == "mean"
    assert torch.equal(bank.labels, torch.arange(20) % 2)
    batch = collate(tiny_train_set(model, 20)[:4])
    model.eval()
    with torch.no_grad():
        out = model(**model_inputs(batch), output_hidden_states=True)
        want = represent(model, out, batch["attention_mask"], "mean")
    assert torch.allclose(bank.get(torch.arange(4)).float(), want, atol=2e-3)
    assert torch.allclose(bank.get(torch.arange(4)).float().norm(dim=-1), torch.ones(4), atol=2e-3)


def test_build_bank_rejects_incomplete_loader():
    model = tiny_bert()
    loader = DataLoader(tiny_train_set(model, 10), batch_size=4, drop_last=True, collate_fn=collate)
    with pytest.raises(CapbenchError, match="covered 8 of 10"):
        build_bank(model, loader, "pooler")


def test_load_or_build_bank_caches(tmp_path):
    model = tiny_bert()
    loader = loader_for(model, n=12)
    first = load_or_build_bank(model, loader, "pooler", tmp_path / "prc", meta={"model": "tiny"})
    assert first.forward_examples == 12
    again = load_or_build_bank(model, loader, "pooler", tmp_path / "prc", meta={"model": "tiny"}, mmap=True)
    assert again.forward_examples == 0 and again.on_disk
    assert torch.equal(again.get(torch.arange(12)), first.get(torch.arange(12)))
    other = load_or_build_bank(model, loader, "mean", tmp_path / "prc", meta={"model": "tiny"})
    assert other.forward_examples == 12 and other.meta["kind"] == "mean"


def test_snapshot_banks_are_bounded(tmp_path):
    model = tiny_bert()
    loader = loader_for(model, n=10, batch_size=5)
    snaps = SnapshotBanks(max_snapshots=2, directory=tmp_path)
    for step in range(3):
        with torch.no_grad():
            model.bert.pooler.dense.bias.add_(0.1 * (step + 1))
        snaps.capture(model, loader, "pooler", step=step)
    assert (snaps.taken, len(snaps), snaps.evicted, snaps.steps) == (3, 2, 1, [1, 2])
    assert snaps.forward_examples == 30 and snaps.forward_passes == 6
    assert snaps.nbytes == 2 * (10 * 32 * 2 + 10 * 8)
    assert snaps.peak_nbytes == snaps.nbytes  # the oldest goes before the new pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot-0001.npy", "snapshot-0002.npy"]
    rows = snaps.get(torch.tensor([0, 3, 4]))
    assert rows.shape == (3, 2, 32)
    assert not torch.equal(rows[:, 0], rows[:, 1])
    snaps.clear()
    assert list(tmp_path.iterdir()) == []


def test_building_a_bank_on_a_miss_leaves_the_global_rng_as_a_hit_does(tmp_path):
    """Training's dropout draws from the global generator after the banks are ready: a miss (which iterates a
    DataLoader, and a DataLoader draws its base seed from that generator) must leave it as a hit does."""
    model = tiny_bert()
    loader = loader_for(model, n=12)
    for _ in range(2):  # a miss, then a hit
        torch.manual_seed(5)
        load_or_build_bank(model, loader, "pooler", tmp_path / "prc", meta={"model": "tiny"})
        assert torch.equal(torch.get_rng_state(), torch.manual_seed(5).get_state())
    list(loader)  # the planted fault: what a build does without the guard
    assert not torch.equal(torch.get_rng_state(), torch.manual_seed(5).get_state())
