"""Slurm through slurmrestd, for the OpenAPI versions of Slurm 22.05 to 25.11.

`versions` holds the pure builders and parsers of each version; `client` does the HTTP.
"""

from schedulers.slurmrest.client import SlurmRestScheduler, make_jwt
from schedulers.slurmrest.versions import (
    DEFAULT_API_VERSION,
    SUPPORTED_API_VERSIONS,
    build_rest_job,
    dialect,
    unsupported_version,
)

__all__ = ["DEFAULT_API_VERSION", "SUPPORTED_API_VERSIONS", "SlurmRestScheduler", "build_rest_job",
           "dialect", "make_jwt", "unsupported_version"]
