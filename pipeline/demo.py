"""`propensity demo`: the Luma story end to end on synthetic data."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from features.synthetic import GeneratorSettings, generate
from pipeline import steps
from pipeline.config import ProjectConfig


def run(out: Path, config: ProjectConfig, profiles: int, days: int, console: Console) -> dict:
    """Generate Luma data, ingest and stitch it, and show what happened to one profile."""
    from pipeline.cli import print_summary

    data_dir, ingested = out / "data", out / "ingested"
    with console.status("1/2 generating synthetic Luma events"):
        generated = generate(GeneratorSettings(profiles=profiles, days=days, seed=config.seed), data_dir)
    console.print(f"[bold]1/2 generate[/]: {generated['events']:,} events, {generated['people']:,} people")
    with console.status("2/2 validating, hashing, de-duplicating and stitching"):
        summary = steps.ingest(data_dir, ingested, config, on_bad_rows="quarantine")
    print_summary(summary, f"2/2 ingest -> {ingested}")

    # A "Sarah": anonymous browsing first, then a sign-in that joined the device to her email.
    loaded = steps.load_events(ingested, config)
    row = loaded.con.execute("""
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
    if row:
        console.print(
            f"Profile [bold]{row[0]}[/] browsed anonymously from {row[1]:%Y-%m-%d} and signed up on "
            f"{row[2]:%Y-%m-%d}: both histories now belong to one profile ({row[3]} yoga events)."
        )
    return summary
