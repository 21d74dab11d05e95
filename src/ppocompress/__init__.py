"""ppocompress: PPO that searches how to compress a transformer, layer by layer."""

import gymnasium

__version__ = "0.1.0"

# The compression task, for any RL library: gymnasium.make("ppocompress/Compress-v0", model=...,
# target_speedup=...). The entry point is a string, so torch and transformers load only then.
gymnasium.register(id="ppocompress/Compress-v0", entry_point="ppocompress.search.factory:make_env")


def load(directory):
    """Loads a compressed model saved by ppocompress (see ppocompress.compress.files.saved)."""
    from ppocompress.compress.files.saved import load as load_compressed

    return load_compressed(directory)
