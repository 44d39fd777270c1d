"""Robustness corpus: bad inputs, crash safety and determinism through the real CLI."""
