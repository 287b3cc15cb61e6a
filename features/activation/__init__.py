"""Activation: segment rules over point-in-time features and model scores qualify profiles
(:mod:`.segments`), memberships are stored by date with their statuses (:mod:`.membership_store`),
and destinations receive the members they may receive (:mod:`.destinations`)."""

from propensity.features.activation.destinations import export_destination
from propensity.features.activation.segments import Segment, compile_segments, qualify

__all__ = ["Segment", "compile_segments", "export_destination", "qualify"]
