"""Bundled example projects for the offline demo and the docs."""
