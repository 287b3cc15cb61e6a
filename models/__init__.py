"""Training, calibration, evaluation, explanation and MLflow tracking of propensity models."""
