"""Entry point MLflow runs when it logs or loads the model ("models from code").

MLflow executes this file instead of unpickling a Python object; the class it names lives in
``models.pyfunc``, shipped beside it through ``code_paths``.
"""

import mlflow

from propensity.models.pyfunc import PropensityPyfunc

mlflow.models.set_model(PropensityPyfunc())
