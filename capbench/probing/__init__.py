"""Linear probes on frozen representations: how much task-agnostic knowledge survives pruning.

- `corpus`: sentences from a local GLUE dir or a text file;
- `tasks`: sentlen, word_content, bigram_shift (+ Hewitt & Liang control tasks), seeded, balanced, split;
- `transfer`: other GLUE tasks as probes;
- `features`: per-layer pooled features, cached by a hash of weights, texts, pooling, max length;
- `probe`: standardised logistic regression, C chosen on dev, mean +- std over seeds;
- `report`: `probe_model`, `retention`, `render_probe_table`, `plot_layer_curves`;
- `cli`: `capbench probe`.
"""

from capbench.probing.report import plot_layer_curves, probe_model, render_probe_table, retention

__all__ = ["plot_layer_curves", "probe_model", "render_probe_table", "retention"]
