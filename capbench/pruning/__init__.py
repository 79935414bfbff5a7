"""Pruning library: masks, schedule, criteria, methods, structured compaction, sparsity accounting.

Public entry points::

    from capbench.pruning import METHODS, method_defaults, make_pruner, sparsity_report, dense_counts
    from capbench.pruning.compact import load_compacted
"""

from capbench.pruning.accounting import dense_counts, sparsity_report
from capbench.pruning.base import Pruner
from capbench.pruning.compact import load_compacted
from capbench.pruning.layers import prunable_linears
from capbench.pruning.methods import METHODS, make_pruner, method_defaults
from capbench.pruning.schedule import cubic_sparsity

__all__ = [
    "METHODS",
    "Pruner",
    "cubic_sparsity",
    "dense_counts",
    "load_compacted",
    "make_pruner",
    "method_defaults",
    "prunable_linears",
    "sparsity_report",
]
