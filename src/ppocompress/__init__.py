"""ppocompress: PPO that searches how to compress a transformer, layer by layer."""

__version__ = "0.1.0"
