"""The MLflow pyfunc wrapper: a feature table in, calibrated probabilities out.

Logged with ``code_paths`` pointing at this package, so ``mlflow.pyfunc.load_model`` works in
a fresh process that has only MLflow, LightGBM, scikit-learn and pandas installed.
"""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd


class PropensityPyfunc(mlflow.pyfunc.PythonModel):
    """Wraps :class:`models.estimator.PropensityModel` (a skops artifact, loaded with an allow-list
    of types; a pickle of an earlier release through a restricted unpickler)."""

    def load_context(self, context) -> None:
        """Load the saved :class:`PropensityModel` from the model's artifacts."""
        from propensity.models.estimator import PropensityModel

        self.model = PropensityModel.load(context.artifacts["propensity_model"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """A feature table (model columns) -> a frame with the calibrated ``probability`` (and, for
        an uplift model, ``uplift``)."""
        probability = self.model.predict_proba(model_input)
        out = pd.DataFrame({"probability": probability}, index=model_input.index)
        if getattr(self.model, "predicts_uplift", False):  # an uplift model: probability if contacted
            out["uplift"] = self.model.predict_uplift(model_input)
        return out
