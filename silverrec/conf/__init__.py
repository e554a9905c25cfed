"""Hydra configs shipped with the package (so installed entry points find them)."""
