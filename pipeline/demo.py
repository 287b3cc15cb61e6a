"""`propensity demo`: the Luma story end to end on synthetic data."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
from rich.console import Console
from rich.table import Table

from propensity.core.config import ProjectConfig
from propensity.features.rules import parse_rule
from propensity.features.simulator import GeneratorSettings
from propensity.features.synthetic_io import generate
from propensity.pipeline import modelling, steps

LAPSED_YOGA = "category_purchase_count_365d_yoga >= 1 AND days_since_last_purchase > 60"


def run(out: Path, config: ProjectConfig, profiles: int, days: int, console: Console) -> dict:
    """Generate Luma, stitch identities, find lapsed yoga buyers, train conversion and upsell
    models, promote them, and explain one profile's scores."""
    from propensity.pipeline.cli import print_buckets, print_metrics, print_summary

    data_dir, ingested = out / "data", out / "ingested"
    with console.status("1/5 generating synthetic Luma events"):
        generated = generate(GeneratorSettings(profiles=profiles, days=days, seed=config.seed), data_dir)
    console.rule("[bold]1/5 generate")
    console.print(
        f"{generated.events:,} events for {generated.people:,} people "
        f"({generated.purchases:,} purchases) in {data_dir}"
    )

    with console.status("2/5 validating, hashing, de-duplicating and stitching"):
        summary = steps.ingest(data_dir, ingested, config, on_bad_rows="quarantine")
    console.rule("[bold]2/5 ingest and stitch identities")
    print_summary(summary, f"ingest -> {ingested}")
    loaded = steps.load_events(ingested, config)
    sarah = loaded.con.execute("""
        WITH firsts AS (
            SELECT profile_id,
                   min(timestamp) FILTER (WHERE email_sha256 IS NULL AND crm_id IS NULL) AS first_anonymous,
                   min(timestamp) FILTER (WHERE event_type = 'signup') AS signed_up,
                   count(*) FILTER (WHERE product_category = 'yoga') AS yoga_events
            FROM events GROUP BY profile_id
        )
        SELECT profile_id, first_anonymous, signed_up, yoga_events FROM firsts
        WHERE signed_up > first_anonymous ORDER BY yoga_events DESC, profile_id LIMIT 1
    """).fetchone()
    if sarah:
        console.print(
            f"Profile [bold]{sarah[0]}[/] browsed anonymously from {sarah[1]:%Y-%m-%d} and signed up "
            f"on {sarah[2]:%Y-%m-%d}: both histories are now one profile ({sarah[3]} yoga events)."
        )

    with console.status("3/5 building point-in-time features"):
        features_path = out / "features" / "latest.parquet"
        built = steps.build_features(ingested, features_path, config)
    console.rule("[bold]3/5 features")
    frame = pd.read_parquet(features_path)
    rule = parse_rule(LAPSED_YOGA, frame.columns, "demo segment")
    con = duckdb.connect()
    con.register("frame", frame)
    lapsed = con.execute(f"SELECT count(*) FROM frame WHERE {rule.sql()}").fetchone()[0]
    console.print(
        f"{built['rows']:,} profiles x {built['features']} features at {built['as_of']}. "
        f"Audience [bold]lapsed yoga buyers[/] ({LAPSED_YOGA}): {lapsed:,} profiles."
    )

    results = {}
    for name in ("conversion", "upsell"):
        with console.status(f"4/5 training {name}"):
            results[name] = modelling.train(name, ingested, config)
        promotion = modelling.promote(name, config)
        console.rule(f"[bold]4/5 train {name}")
        result = results[name]
        console.print(f"registered {name} v{result['version']} (run {result['run_id']}); {promotion.reason}")
        print_metrics(result["metrics"], f"{name}: test snapshot {result['snapshots'][-1]}")
        print_buckets(result["buckets"])

    console.rule("[bold]5/5 why this score?")
    _explain_one(frame, sarah[0] if sarah else frame["profile_id"].iloc[0], config, console)
    return {"ingest": summary, "features": built, "models": {k: v["metrics"] for k, v in results.items()}}


def _explain_one(frame: pd.DataFrame, profile_id: str, config: ProjectConfig, console: Console) -> None:
    from propensity.models import registry
    from propensity.models.explain import top_factors
    from propensity.pipeline.config_files import load_model_config

    row = frame[frame["profile_id"] == profile_id]
    if row.empty:
        return
    client = registry.configure(config)
    con = duckdb.connect()
    con.register("profile", row)
    for name in ("conversion", "upsell"):
        model_cfg = load_model_config(name, config)
        eligible = parse_rule(model_cfg.population, row.columns, name)
        if not con.execute(f"SELECT count(*) FROM profile WHERE {eligible.sql()}").fetchone()[0]:
            console.print(f"{profile_id} is not in the {name} population ({model_cfg.population}).")
            continue
        model, mv = registry.load_propensity_model(client, name, alias=registry.CHAMPION)
        probability = float(model.predict_proba(row)[0])
        table = Table(title=f"{name} v{mv.version} for {profile_id}: probability {probability:.3f}")
        for column in ("factor", "value", "impact (log-odds)"):
            table.add_column(column)
        for factor in top_factors(model, row, k=5)[0]:
            value = factor["value"]
            table.add_row(
                factor["label"],
                "missing" if value is None else f"{value:g}" if isinstance(value, float) else str(value),
                f"{factor['impact']:+.3f}",
            )
        console.print(table)
