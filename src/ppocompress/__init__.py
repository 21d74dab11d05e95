"""ppocompress: PPO that searches how to compress a transformer, layer by layer."""

__version__ = "0.1.0"


def load(directory):
    """Loads a compressed model saved by ppocompress (see ppocompress.compress.export)."""
    from ppocompress.compress.export import load as load_compressed

    return load_compressed(directory)
