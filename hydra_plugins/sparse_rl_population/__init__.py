"""Hydra launcher plugin of sparse_rl: ``hydra/launcher=population`` (the population engine)."""
