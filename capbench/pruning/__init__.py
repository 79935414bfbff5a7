"""Pruning library: masks, schedule, criteria, pruners (one module per method in ``pruners/``), structured
compaction, sparsity accounting.

Public entry points::

    from capbench.pruning import METHODS, method_defaults, make_pruner, sparsity_report, dense_counts
    from capbench.pruning.compact import load_compacted
"""

from capbench.layout import prunable_linears
from capbench.pruning.accounting import dense_counts, sparsity_report
from capbench.pruning.base import Pruner
from capbench.pruning.compact import load_compacted
from capbench.pruning.pruners import PRUNING_METHODS as METHODS
from capbench.pruning.pruners import make_pruner, method_defaults, register_method
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
    "register_method",
    "sparsity_report",
]
