"""Identity stitching: identities seen together become one profile (:mod:`.stitching`), the
graph's components and guardrails as arrays (:mod:`.graph`), and the graph as it was known at
any as-of date (:mod:`.as_of`)."""

from propensity.features.identity.as_of import AsOfSources, IdentityGraph
from propensity.features.identity.stitching import StitchResult, build_profiles, stitch, stitch_events

__all__ = ["AsOfSources", "IdentityGraph", "StitchResult", "build_profiles", "stitch", "stitch_events"]
