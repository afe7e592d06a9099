"""Scoring workers (Celery over Redis, torch). Built by a later issue."""
