"""Whether the Spark tests can run here, decided once for every Spark test module, and the
local-mode engine they run on (``ENGINE``).

`make test` sets ``PROPENSITY_REQUIRE_SPARK``: there a missing pyspark or Java fails the run
instead of skipping the group (a green CI must mean the engines were compared). Elsewhere
(`pytest -m spark` on a laptop without Java) the module is skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

from propensity.core.config import EngineConfig

# The one local-mode Spark every Spark test module runs on: two cores, two shuffle partitions,
# no UI, no adaptive plans (the same plans from run to run).
ENGINE = EngineConfig(
    name="spark",
    spark={
        "master": "local[2]",
        "app_name": "propensity-tests",
        "shuffle_partitions": 2,
        "conf": {"spark.ui.enabled": False, "spark.sql.adaptive.enabled": False},
    },
)


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
