"""The Luma simulation: people with latent traits (:mod:`.world`) live through a calendar one
vectorised day at a time (:mod:`.dynamics`, :mod:`.events`), written to disk by :mod:`.writer`;
:mod:`.oracle` gives the best achievable prediction; :mod:`.easy` is the original world, frozen;
:mod:`.campaigns` adds randomised campaigns with each person's true effect.
Depends on ``propensity.core`` only."""

from propensity.features.synthetic.simulator import simulate
from propensity.features.synthetic.world import GeneratorSettings
from propensity.features.synthetic.writer import GenerationSummary, generate

__all__ = ["GenerationSummary", "GeneratorSettings", "generate", "simulate"]
