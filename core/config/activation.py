"""Segments, destinations and monitoring configs: what consumes the scores."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from propensity.core.config.base import NAME_PATTERN, _Strict, _unique


class HoldoutFields(_Strict):
    """A holdout declared on a segment or on a destination (one split: features.activation.holdout)."""

    holdout: float | None = Field(default=None, gt=0, le=0.5)
    """Share of the qualifying members withheld (arm `holdout`) to measure the lift against; the others are
    `targeted`. On a segment they are withheld from every export; on a destination from that destination's
    export, among the members its consents allow. A member's arm is a hash of profile, segment (and
    destination) and salt, kept across dates.
    """
    holdout_salt: str = ""
    """Changes which members the hash puts in the holdout (a new salt: a fresh draw for a new campaign)."""
    holdout_minimum: int = Field(default=1000, ge=1)
    """A holdout with fewer profiles is refused (with the lift it could detect): it could not show a lift."""
    baseline_rate: float = Field(default=0.05, gt=0, lt=1)
    """The outcome rate expected without the campaign: what the power figures of the holdout assume."""


class SegmentConfig(HoldoutFields):
    """One audience: a rule over features, profile attributes and model scores."""

    name: str = Field(pattern=NAME_PATTERN)
    """Lower case letters, digits and _: it becomes file names."""
    description: str = ""
    """What the audience is for, for people."""
    rule: str = Field(min_length=1)
    """e.g. "upsell.score >= 70 AND days_since_last_purchase > 60"; checked by features.build.rules."""


class SegmentsFile(_Strict):
    """configs/segments.yaml"""

    segments: list[SegmentConfig] = Field(min_length=1)
    """The audiences, each qualified at every as-of date."""

    @field_validator("segments")
    @classmethod
    def _unique_names(cls, value: list[SegmentConfig]) -> list[SegmentConfig]:
        _unique([s.name for s in value], "segment")
        return value


class DestinationConfig(HoldoutFields):
    """Where segments are activated, and which identities and purpose that destination has."""

    name: str = Field(pattern=NAME_PATTERN)
    """Lower case letters, digits and _: it becomes directory names."""
    description: str = ""
    """What the destination is, for people."""
    format: Literal["csv", "parquet"] = "csv"
    """File format of the export."""
    identities: list[str] = Field(min_length=1)
    """Identity namespaces this destination may receive; nothing else is ever written."""
    marketing_action: str = Field(min_length=1)
    """What the destination does with the audience; a segment built on a model governed for another action is
    refused for it.
    """
    segments: list[str] = Field(min_length=1)
    """Segments sent to this destination."""
    include_exited: bool = False
    """Also send profiles that left a segment (status `exited`), for destinations that sync changes."""
    required_consents: list[Literal["consent_personalization", "consent_marketing"]] = Field(
        default_factory=list
    )
    """Consents that must be explicitly 'y' for a profile to be sent (e.g. consent_marketing for email)."""
    file_mode: str = Field(default="0600", pattern=r"^0?[0-7]{3}$")
    """Permissions of the exported files (octal): they hold identities, so by default only their owner may
    read them; folders get the same bits plus search (x) where read is set.
    """

    @field_validator("identities")
    @classmethod
    def _hashed_only(cls, value: list[str]) -> list[str]:
        for raw in ("email", "phone"):
            if raw in value:
                raise ValueError(f"'{raw}' is hashed on ingest and never exported; list '{raw}_sha256'")
        return _unique(value, "identity namespace")

    @field_validator("segments")
    @classmethod
    def _unique_segments(cls, value: list[str]) -> list[str]:
        return _unique(value, "segment")


class DestinationsFile(_Strict):
    """configs/destinations.yaml"""

    destinations: list[DestinationConfig] = Field(min_length=1)
    """Where segments are activated."""

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, value: list[DestinationConfig]) -> list[DestinationConfig]:
        _unique([d.name for d in value], "destination")
        return value


class MonitorConfig(_Strict):
    """configs/monitoring.yaml: drift of a model's scores and top features."""

    psi_threshold: float = Field(default=0.2, gt=0)
    """PSI at or above this on the score or any monitored feature raises the alert (0.1-0.2: moderate shift;
    >= 0.2: significant, the usual rule of thumb).
    """
    top_features: int = Field(default=10, ge=0)
    """the model's most important, by gain"""
    bins: int = Field(default=10, ge=2, le=100)
    """quantile bins of the reference"""
    epsilon: float = Field(default=1e-4, gt=0, lt=0.01)
    """share given to an empty bin"""
