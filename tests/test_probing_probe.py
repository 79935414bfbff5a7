"""Linear probes: separable features are learnt, random ones are not, C is chosen on dev only."""

import numpy as np
from sklearn.preprocessing import StandardScaler

import capbench.probing.probe as probe_module
from capbench.probing.probe import C_GRID, fit_probe, probe_layers
from capbench.probing.tasks import ProbeTask, assign_splits


def synthetic_task(n_per_class=40, k=3, seed=0) -> ProbeTask:
    labels = np.repeat(np.arange(k), n_per_class)
    counts = {
        c: {"train": n_per_class // 2, "dev": n_per_class // 4, "test": n_per_class // 4} for c in range(k)
    }
    split = assign_splits(labels, counts, np.random.default_rng(seed))
    control = np.random.default_rng(seed + 1).integers(0, k, len(labels))
    return ProbeTask(
        "synthetic", tuple(map(str, range(k))), [f"t{i}" for i in range(len(labels))], labels, split, control
    )


def features(task: ProbeTask, separable: bool, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(task.labels), dim))
    if separable:
        x[np.arange(len(x)), task.labels] += 6.0
    return x.astype(np.float32)


def test_separable_features_reach_high_accuracy_random_stay_near_chance():
    t = synthetic_task()
    good = probe_layers(
        np.stack([features(t, False), features(t, True)]), t, seeds=(0, 1), c_grid=(0.01, 1.0)
    )
    assert good["layers"][1]["acc"] > 0.95
    assert good["best_layer"] == 1 and good["best"]["acc"] == good["layers"][1]["acc"]
    assert abs(good["layers"][0]["acc"] - 1 / 3) < 0.2
    # control labels are random per example here: no information, so selectivity is large
    assert good["layers"][1]["selectivity"] > 0.4
    assert len(good["layers"][1]["accs"]) == 2 and good["layers"][1]["std"] >= 0
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(600, 20)), rng.integers(0, 2, 600)
    random = fit_probe(x[:300], y[:300], x[300:400], y[300:400], x[400:], y[400:])
    assert abs(random["test_acc"] - 0.5) < 0.12


def test_c_is_chosen_on_dev_never_on_test(monkeypatch):
    t = synthetic_task()
    calls = []

    class Spy(probe_module.LogisticRegression):
        def predict(self, x):
            calls.append((self.C, len(x), x[0, 0]))
            return super().predict(x)

    monkeypatch.setattr(probe_module, "LogisticRegression", Spy)
    x = features(t, True)
    result = probe_module.probe_task(x, t, c_grid=C_GRID)
    # trace each predict call to its split by the first scaled value of the rows it was given
    scaler = StandardScaler().fit(x[t.indices("train")])
    dev_first = scaler.transform(x[t.indices("dev")])[0, 0]
    test_first = scaler.transform(x[t.indices("test")])[0, 0]
    on_dev = [c for c, _, first in calls if np.isclose(first, dev_first)]
    on_test = [c for c, _, first in calls if np.isclose(first, test_first)]
    assert sorted(on_dev) == sorted(C_GRID)  # every candidate scored on dev
    assert on_test == [result["C"]]  # only the chosen probe ever sees test
    assert len(calls) == len(C_GRID) + 2  # + the chosen probe's train accuracy
    test_at = [i for i, (_, _, first) in enumerate(calls) if np.isclose(first, test_first)]
    dev_at = [i for i, (_, _, first) in enumerate(calls) if np.isclose(first, dev_first)]
    assert test_at[0] > max(dev_at)  # and only after C was fixed


def test_best_layer_is_chosen_on_dev():
    t = synthetic_task()
    x = np.stack([features(t, True, seed=1), features(t, False, seed=2)])
    result = probe_layers(x, t, seeds=(0,), c_grid=(1.0,), control=False)
    assert result["best_layer"] == 0 and "selectivity" not in result["layers"][0]


def test_control_is_probed_at_the_task_c_and_reports_train_accuracy(monkeypatch):
    t = synthetic_task()
    seen = []
    real = probe_module.fit_fixed_c

    def spy(x_train, y_train, x_test, y_test, c, max_iter=probe_module.MAX_ITER):
        seen.append(c)
        return real(x_train, y_train, x_test, y_test, c, max_iter)

    monkeypatch.setattr(probe_module, "fit_fixed_c", spy)
    x = features(t, True)[None]
    result = probe_layers(x, t, seeds=(0, 1), c_grid=C_GRID)
    layer = result["layers"][0]
    assert seen == layer["C"]  # the control's C is the task's, per seed: never re-tuned on control labels
    assert (
        0.0 <= layer["control_train_acc"] <= 1.0 and layer["control_train_acc"] >= layer["control_acc"] - 0.2
    )
    assert 0.9 < layer["train_acc"] <= 1.0
