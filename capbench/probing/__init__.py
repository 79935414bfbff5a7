"""Linear probes on frozen representations: how much task-agnostic knowledge survives pruning.

- `corpus`: sentences from a GLUE data source (core loaders: hub, hub-schema dir, TSV) or a text file;
- `tasks`: sentlen, word_content, bigram_shift (+ Hewitt & Liang control tasks), seeded, balanced, split;
- `transfer`: other GLUE tasks as probes;
- `features`: per-layer pooled features, cached by the weights digest, texts, pooling, max length;
- `probe`: standardised logistic regression, C chosen on dev, mean +- std over seeds;
- `options`: `ProbeOptions` (the protocol) and probe names;
- `run`: `load_model` (the core loader) and `probe_model`;
- `retention`: per-task summaries and retention against a reference: (acc - acc0) / (acc_ref - acc0) at the
  reference's best encoder layer, acc0 its embeddings-only accuracy; probes under the margin left out;
- `floors`: the random-weights and zeroed-encoder models every probe must score near 0;
- `report`, `plots`: `format_layer_table`, `render_probe_table`, `plot_layer_curves`;
- `runner_hook`: the `probes` measurement of `capbench run --probes` (registered in capbench.measure);
- `cli`: `capbench probe`.
"""

from capbench.probing.options import ProbeOptions
from capbench.probing.plots import plot_layer_curves
from capbench.probing.report import render_probe_table
from capbench.probing.retention import retention
from capbench.probing.run import probe_model

__all__ = ["ProbeOptions", "plot_layer_curves", "probe_model", "render_probe_table", "retention"]
