"""Annotation Planner: rare-class-aware annotation planning for Label Studio projects."""

__version__ = "0.1.0"
