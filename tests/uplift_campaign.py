"""A simulated Luma world with the yoga campaign (random holdout, known individual effects),
ingested, with the campaign's arms recorded as a past export's memberships, and an uplift model
config that reads them: what the uplift tests train and score."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from propensity.core.config import ProjectConfig
from propensity.features.synthetic import GeneratorSettings, generate
from propensity.features.synthetic.world import LUMA_YOGA
from propensity.pipeline.jobs import ingest as ingest_jobs

MODEL = "yoga_uplift"


@dataclass(frozen=True)
class CampaignWorld:
    ingested: Path  # with the world's ground_truth/ beside the ingest's files
    models_dir: Path
    memberships_dir: Path
    sent: dt.date
    cutoff: dt.date  # training's as-of: the campaign's horizon has passed
    people: pd.DataFrame  # campaign_people.parquet with each person's profile_id

    def config(self, base: ProjectConfig) -> ProjectConfig:
        """``base`` reading this world's model configs."""
        return base.model_copy(update={"models_dir": str(self.models_dir)})


def campaign_world(root: Path, profiles: int, seed: int = 11) -> CampaignWorld:
    """Generate and ingest a world of ``profiles`` people with the yoga campaign; write the arms
    as ``segment=yoga`` memberships at the send date and the uplift model's config."""
    generate(GeneratorSettings(profiles=profiles, days=200, seed=seed, campaigns=(LUMA_YOGA,)), root / "raw")
    ingested = root / "ingested"
    ingest_jobs.ingest(root / "raw", ingested, ProjectConfig(), on_bad_rows="quarantine")
    truth = root / "raw" / "ground_truth"
    (ingested / "ground_truth").mkdir()
    for name in ("campaign_people.parquet", "campaigns.json"):
        (ingested / "ground_truth" / name).write_bytes((truth / name).read_bytes())
    sent = dt.date.fromisoformat(json.loads((truth / "campaigns.json").read_text())[0]["sent"])
    identities = pd.read_parquet(ingested / "identity_map.parquet")
    crm = identities[identities["namespace"] == "crm_id"][["profile_id", "value"]]
    people = pd.read_parquet(truth / "campaign_people.parquet").merge(
        crm.rename(columns={"value": "crm_id"}), on="crm_id"
    )
    memberships = root / "segments"
    (memberships / f"as_of={sent}").mkdir(parents=True)
    pd.DataFrame(
        {
            "profile_id": people["profile_id"],
            "segment": "yoga",
            "status": "realized",
            "arm": people["arm"],
            "as_of": sent,
            "qualified_at": sent,
        }
    ).to_parquet(memberships / f"as_of={sent}" / "memberships.parquet", index=False)
    models = root / "models"
    models.mkdir()
    # The outcome window starts the day after the send (as_of = sent + 1) and spans the
    # campaign's 28-day horizon; the arms recorded at the send date are within 3 days of it.
    (models / f"{MODEL}.yaml").write_text(
        f"name: {MODEL}\n"
        'population: "days_since_last_event <= 365"\n'
        "outcome: {event_type: purchase, category: yoga, horizon_days: 28}\n"
        "training: {snapshots: {count: 3, spacing_days: 28}, min_positives: 20, min_negatives: 20,"
        " bootstrap_resamples: 1000}\n"
        f'treatment: {{segment: yoga, memberships_dir: "{memberships}", window_days: 3}}\n'
    )
    return CampaignWorld(ingested, models, memberships, sent, sent + dt.timedelta(days=29), people)
