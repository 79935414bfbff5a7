"""capbench: a benchmark suite for pruning pre-trained language models."""

__version__ = "0.1.0"
