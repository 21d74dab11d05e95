"""The engine's own commands (`ppocompress evaluate`, `ppocompress bench`); the CLI parses and calls them."""
