"""Where things are: the checkout, the shared fixtures beside it, the test lab's directory."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
TEST_LAB_DIR = Path(os.environ.get("HPCGATE_TEST_LAB_DIR", "/var/tmp/hpcgate-lab-test"))
