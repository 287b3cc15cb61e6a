"""Training, calibration, evaluation, explanation and MLflow tracking of propensity models."""

import os

# LightGBM's threads (and numba's parallel loops) run on GNU OpenMP, whose idle threads spin by
# default: on a busy machine a spinning thread takes the core its partner needs, and two threads
# burnt 7x the CPU of one (measured: 100 rounds, 109k x 245, load average 13: 33.6 CPU-s against
# 4.3; passive, 4.8 against 4.7). Read once, when the OpenMP library loads: so set here, before
# any module of this package imports lightgbm. A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
