"""Whether the Spark tests can run here, decided once for every Spark test module.

`make test` sets ``PROPENSITY_REQUIRE_SPARK``: there a missing pyspark or Java fails the run
instead of skipping the group (a green CI must mean the engines were compared). Elsewhere
(`pytest -m spark` on a laptop without Java) the module is skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest


def require_spark() -> None:
    """Fail (under ``PROPENSITY_REQUIRE_SPARK``) or skip the calling module when pyspark or Java
    is missing."""
    required = bool(os.environ.get("PROPENSITY_REQUIRE_SPARK"))
    missing = None
    if importlib.util.find_spec("pyspark") is None:
        missing = "pyspark is not installed: pip install -e '.[spark]'"
    elif shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        missing = "Java is not installed: Spark needs Java 17+"
    if missing is None:
        return
    if required:
        pytest.fail(missing, pytrace=False)
    pytest.skip(missing, allow_module_level=True)
