"""Scoring workers: images in, class probabilities and embeddings out, into the planner's store.

Torch lives here and only here; the daemon never imports this package's model code.
"""
