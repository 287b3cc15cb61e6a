"""Training, calibration, evaluation, explanation and the MLflow registry."""
