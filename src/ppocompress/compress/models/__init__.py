"""Models: loading, the family registry and the per-family view of a layer."""
