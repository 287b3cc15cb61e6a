"""CLI, configuration and step orchestration for propensity."""
