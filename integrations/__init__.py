"""Adapters to outside systems (Label Studio, ...). Built by a later issue."""
