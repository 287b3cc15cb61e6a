"""The demo's last step: who the uplift model would target next.

The yoga campaign's send log (crm_id and arm) is recorded as a past export's memberships, an
uplift model (`yoga_uplift`, T- or X-learner chosen on validation by Qini) is trained on it after
the campaign's horizon, and scored at the latest date: the top 20 % by uplift against the top
20 % by propensity, the incremental conversions each would have brought on the test snapshot
(measured, and the simulator's truth) with intervals, the Qini against the oracle's, and how far
the two next audiences differ.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from propensity.core.config import ProjectConfig
from propensity.pipeline.jobs import score as score_jobs
from propensity.pipeline.jobs import train as model_jobs

MODEL = "yoga_uplift"
SEGMENT = "yoga_campaign"
TOP = 0.2


def record_campaign_arms(data_dir: Path, ingested: Path, out: Path) -> tuple[Path, dt.date]:
    """The send log as memberships of ``SEGMENT`` at the send date (each row's crm_id mapped to
    its profile), what a holdout segment's export records; returns (folder, send date)."""
    truth = data_dir / "ground_truth"
    sent = dt.date.fromisoformat(json.loads((truth / "campaigns.json").read_text())[0]["sent"])
    identities = pd.read_parquet(
        ingested / "identity_map.parquet", columns=["profile_id", "namespace", "value"]
    )
    crm = identities[identities["namespace"] == "crm_id"][["profile_id", "value"]]
    people = pd.read_parquet(truth / "campaign_people.parquet", columns=["crm_id", "arm"])
    people = people.merge(crm, left_on="crm_id", right_on="value")
    partition = out / f"as_of={sent}"
    partition.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "profile_id": people["profile_id"],
            "segment": SEGMENT,
            "status": "realized",
            "as_of": sent,
            "qualified_at": sent,
            "arm": people["arm"],
        }
    ).sort_values("profile_id").to_parquet(partition / "memberships.parquet", index=False)
    return out, sent


def _model_config(models_dir: Path, memberships: Path) -> None:
    """The uplift model: yoga purchases within the campaign's horizon, treated = targeted."""
    models_dir.mkdir(parents=True, exist_ok=True)
    (models_dir / f"{MODEL}.yaml").write_text(
        f"name: {MODEL}\n"
        "description: who buys yoga because of the campaign (targeted vs holdout of the yoga campaign)\n"
        'population: "days_since_last_event <= 365"\n'
        "outcome: {event_type: purchase, category: yoga, horizon_days: 28}\n"
        "training: {snapshots: {count: 3, spacing_days: 28}, min_positives: 20, min_negatives: 20,"
        " bootstrap_resamples: 1000}\n"
        f'treatment: {{segment: {SEGMENT}, memberships_dir: "{memberships}", window_days: 3}}\n'
    )


def _interval(m: dict[str, float], name: str) -> str:
    return f"{m[name]:,.0f} (95 % interval {m[name + '_low']:,.0f} to {m[name + '_high']:,.0f})"


def run(
    data_dir: Path, ingested: Path, config: ProjectConfig, out: Path, latest: dt.date, console: Console
) -> dict[str, Any]:
    """Train, evaluate and score the yoga uplift model and tell who it would target next;
    returns the headline figures."""
    memberships, sent = record_campaign_arms(data_dir, ingested, out / "campaign_arms")
    _model_config(out / "models", memberships)
    cfg = config.model_copy(update={"models_dir": str(out / "models")})
    with console.status("training the yoga uplift model on the campaign's arms"):
        fit = model_jobs.train_model(MODEL, ingested, cfg, as_of=sent + dt.timedelta(days=29))
    _print_test_figures(fit, console)
    scored, next_uplift, next_propensity, shared = _next_audience(
        ingested, cfg, fit.version, latest, out, console
    )
    m, k = fit.metrics, round(100 * TOP)
    return {
        "version": fit.version,
        "model_family": fit.model_family,
        "qini": m["test_qini"],
        "oracle_qini": m["test_oracle_qini"],
        "scores": str(scored.out),
        "next_top_by_uplift": next_uplift,
        "next_top_by_propensity": next_propensity,
        "next_overlap": shared,
        **{key: m[key] for key in m if f"incremental_top{k}" in key},
    }


def _print_test_figures(fit: Any, console: Console) -> None:
    """The registered model's figures on the test snapshot: Qini against the oracle's, and the
    incremental buyers of targeting the top by uplift or by propensity (measured and true)."""
    m, k = fit.metrics, round(100 * TOP)
    console.print(
        f"registered {MODEL} v{fit.version} ({fit.model_family}, chosen on validation by Qini); "
        f"test snapshot {m['test_uplift_rows']:,.0f} people, {m['test_uplift_treated']:,.0f} targeted"
    )
    console.print(
        f"Qini coefficient {m['test_qini']:.4f} (95 % interval {m['test_qini_low']:.4f} to "
        f"{m['test_qini_high']:.4f}); the oracle's (ranked by each person's true effect) "
        f"{m['test_oracle_qini']:.4f}"
    )
    console.print(
        f"targeting the top {k} % of the test snapshot, incremental yoga buyers "
        "(measured against the holdout):"
    )
    console.print(f"  by uplift:     {_interval(m, f'test_incremental_top{k}_by_uplift')}")
    console.print(f"  by propensity: {_interval(m, f'test_incremental_top{k}_by_propensity')}")
    console.print(
        f"  uplift's less propensity's: {_interval(m, f'test_incremental_top{k}_uplift_minus_propensity')}"
    )
    console.print(
        f"  the simulator's truth: by uplift {_interval(m, f'test_true_incremental_top{k}_by_uplift')}"
    )
    console.print(
        "                         by propensity "
        + _interval(m, f"test_true_incremental_top{k}_by_propensity")
    )


def _next_audience(
    ingested: Path, cfg: ProjectConfig, version: Any, latest: dt.date, out: Path, console: Console
) -> tuple[Any, float, float, int]:
    """Who the model would target next: the scores at ``latest``, and the incremental buyers the
    model expects of the top by uplift and by propensity, and how many people both pick."""
    k = round(100 * TOP)
    with console.status(f"scoring {MODEL} at {latest}"):
        scored = score_jobs.score_model(MODEL, ingested, cfg, latest, out / "scores", version=version)
    scores = pd.read_parquet(scored.out, columns=["profile_id", "probability", "uplift"])
    n = max(1, round(TOP * len(scores)))
    # Ties go to the smaller profile id: the same audience on every run.
    by_uplift = scores.sort_values(["uplift", "profile_id"], ascending=[False, True]).head(n)
    by_propensity = scores.sort_values(["probability", "profile_id"], ascending=[False, True]).head(n)
    shared = len(set(by_uplift["profile_id"]) & set(by_propensity["profile_id"]))
    next_uplift, next_propensity = float(by_uplift["uplift"].sum()), float(by_propensity["uplift"].sum())
    console.print(
        f"who it would target next ({latest}, {len(scores):,} profiles scored): the top {k} % by uplift "
        f"({n:,} people) would bring about {next_uplift:,.0f} incremental yoga buyers by the model, the top "
        f"{k} % by propensity (the probability of buying if contacted) "
        f"{next_propensity:,.0f}; only {shared:,} people ({shared / n:.0%}) are in both"
    )
    console.print(f"scores with `uplift` in {scored.out} (a segment rule can read `{MODEL}.uplift >= 0.02`)")
    return scored, next_uplift, next_propensity, shared
