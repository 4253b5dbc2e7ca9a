"""Talks to batch systems (Slurm, PBS); knows nothing of JupyterHub."""

from schedulers.model import JobRequest, JobState, JobStatus, UnsafeValue

__all__ = ["JobRequest", "JobState", "JobStatus", "UnsafeValue"]
