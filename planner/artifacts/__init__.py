"""Artifacts for training jobs: what to emit (pure), an atomic versioned writer, a reader."""

from planner.artifacts.content import (
    SCHEMA_VERSION,
    Artifact,
    EmitReason,
    TrainImages,
    TrainingPlan,
    build_artifact,
    plan_training,
)
from planner.artifacts.layout import ArtifactError
from planner.artifacts.reader import LoadedArtifact, latest_version, list_versions, read_artifact
from planner.artifacts.writer import WrittenArtifact, write_artifact

__all__ = [
    "SCHEMA_VERSION",
    "Artifact",
    "ArtifactError",
    "EmitReason",
    "LoadedArtifact",
    "TrainImages",
    "TrainingPlan",
    "WrittenArtifact",
    "build_artifact",
    "latest_version",
    "list_versions",
    "plan_training",
    "read_artifact",
    "write_artifact",
]
