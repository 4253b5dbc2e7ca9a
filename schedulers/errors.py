"""Errors from batch systems, each with a sentence a researcher can act on and the raw text."""

from __future__ import annotations


class SchedulerError(Exception):
    """Base: `message` is plain words for people, `raw` what the scheduler printed."""

    def __init__(self, message: str, raw: str = ""):
        super().__init__(message)
        self.message = message
        self.raw = raw


class SubmitError(SchedulerError):
    """The scheduler refused the job (limits, account, partition...)."""


class SchedulerUnavailable(SchedulerError):
    """The scheduler could not be asked (controller down, timeout). Job states become UNKNOWN."""


class CancelError(SchedulerError):
    """A job could not be cancelled (and has not already ended)."""
