"""GLUE data from the hub, a local directory in the hub's schema, or a classic glue_data/ TSV directory."""

from capbench.data.sources import DataSource, detect_source, load_split

__all__ = ["DataSource", "detect_source", "load_split"]
