"""Text: the embedded corpus, its fixed splits, and running a model over calibration text."""
