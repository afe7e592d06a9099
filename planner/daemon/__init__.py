"""The daemon: leadership, scheduling and the cycle that ties sync, scoring and pushing together."""
