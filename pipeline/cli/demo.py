"""`propensity demo`: the Luma journey of USE-CASE.md end to end on synthetic data.

generate -> ingest and stitch -> features -> train conversion, upsell, churn -> promote ->
score at two as-of dates -> qualify segments (statuses against the earlier date) -> export to
destinations -> monitor -> report, and Sarah's story through all of it; then journeys, and the
yoga campaign measured against its holdout, and who the uplift model trained on it would target
next.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
from rich.console import Console
from rich.table import Table

from propensity.core.config import ProjectConfig
from propensity.core.io import write_json
from propensity.features.build.event_queries import data_end
from propensity.features.duckdb import DuckDBEngine
from propensity.features.sql import sql_string
from propensity.features.synthetic.world import LUMA_YOGA, GeneratorSettings
from propensity.features.synthetic.writer import generate
from propensity.models import tracking
from propensity.pipeline.cli import campaign_demo, journey_demo, uplift_demo
from propensity.pipeline.cli.printing import (
    print_buckets,
    print_explanation,
    print_metrics,
    print_segments,
    print_summary,
)
from propensity.pipeline.jobs import evaluate as evaluate_jobs
from propensity.pipeline.jobs import events as event_jobs
from propensity.pipeline.jobs import explain as explain_jobs
from propensity.pipeline.jobs import export as export_jobs
from propensity.pipeline.jobs import ingest as ingest_jobs
from propensity.pipeline.jobs import monitor as monitor_jobs
from propensity.pipeline.jobs import report as report_jobs
from propensity.pipeline.jobs import score as score_jobs
from propensity.pipeline.jobs import segments as segment_jobs
from propensity.pipeline.jobs import train as model_jobs

MODELS = ("conversion", "upsell", "churn")
LAPSED_YOGA = "lapsed_yoga_buyers_likely_to_return"
EMAIL_DESTINATION = "email_platform"
# Statuses need an earlier run to compare with: the demo scores and qualifies two weeks apart.
PREVIOUS_RUN_DAYS = 14


@dataclass
class DemoResult:
    """Where everything went and the headline figures."""

    out: Path
    seconds: float
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    campaign: dict[str, Any] = field(default_factory=dict)  # the yoga campaign's measured lift
    uplift: dict[str, Any] = field(default_factory=dict)  # the yoga uplift model: who it targets next
    segments: dict[str, dict[str, int]] = field(default_factory=dict)
    buckets: dict[str, dict[str, int]] = field(default_factory=dict)  # per model, at the latest as-of
    # per model and bucket: the predicted rate lies in the actual rate's interval on the test snapshot
    calibrated: dict[str, dict[str, bool]] = field(default_factory=dict)
    sarah: str | None = None
    report: Path | None = None
    journeys: dict[str, Any] = field(default_factory=dict)


def _step(console: Console, title: str) -> None:
    console.rule(f"[bold]{title}")


def _find_sarah(
    con: duckdb.DuckDBPyConnection, memberships: Path, exports: Path, as_of: dt.date
) -> str | None:
    """A profile that tells the story: browsed anonymously before signing up, bought yoga,
    lapsed, is in the lapsed-yoga segment and went to the email platform. The most complete
    such profile wins; the story says which parts it lacks otherwise."""
    member_files = sql_string(str(memberships / f"as_of={as_of}" / "memberships.parquet"))
    export_glob = exports / f"destination={EMAIL_DESTINATION}"
    exported = (
        f"(SELECT DISTINCT value FROM read_csv({sql_string(str(export_glob / '**' / '*.csv'))}, "
        f"union_by_name=true) WHERE segment = {sql_string(LAPSED_YOGA)})"
        if any(export_glob.rglob("*.csv"))
        else "(SELECT NULL::VARCHAR AS value WHERE false)"
    )
    row = con.execute(f"""
        WITH history AS (
            SELECT profile_id,
                   min(timestamp) FILTER (WHERE email_sha256 IS NULL AND crm_id IS NULL) AS first_anonymous,
                   min(timestamp) FILTER (WHERE event_type = 'signup') AS signed_up,
                   count(*) FILTER (WHERE event_type = 'purchase' AND product_category = 'yoga')
                       AS yoga_orders
            FROM events GROUP BY profile_id
        ), members AS (
            SELECT profile_id FROM read_parquet({member_files})
            WHERE segment = {sql_string(LAPSED_YOGA)} AND status IN ('realized', 'existing')
        ), crm AS (
            SELECT profile_id, value FROM identity_map WHERE namespace = 'crm_id'
        )
        SELECT h.profile_id,
               (h.signed_up > h.first_anonymous)::INT + (h.yoga_orders > 0)::INT
               + (m.profile_id IS NOT NULL)::INT + (c.value IN {exported})::INT AS story
        FROM history h
        LEFT JOIN members m USING (profile_id)
        LEFT JOIN crm c USING (profile_id)
        ORDER BY story DESC, h.yoga_orders DESC, h.profile_id
        LIMIT 1
    """).fetchall()
    return row[0][0] if row else None


def _sarah_story(
    con: duckdb.DuckDBPyConnection, profile_id: str, memberships: Path, exports: Path, as_of: dt.date
) -> list[str]:
    facts = con.execute(f"""
        SELECT min(timestamp) FILTER (WHERE email_sha256 IS NULL AND crm_id IS NULL),
               min(timestamp) FILTER (WHERE event_type = 'signup'),
               max(timestamp) FILTER (WHERE event_type = 'purchase'),
               count(*) FILTER (WHERE event_type = 'purchase' AND product_category = 'yoga'),
               count(DISTINCT ecid)
        FROM events WHERE profile_id = {sql_string(profile_id)}
    """).fetchall()[0]
    first_anonymous, signed_up, last_purchase, yoga_orders, devices = facts
    lines = []
    if first_anonymous is not None and signed_up is not None and signed_up > first_anonymous:
        lines.append(
            f"browsed anonymously from {first_anonymous:%Y-%m-%d} and signed up on {signed_up:%Y-%m-%d}: "
            f"{devices} device(s) and her account are one profile now"
        )
    if last_purchase is not None:
        lapsed = (as_of - last_purchase.date()).days
        lines.append(f"bought yoga apparel {yoga_orders} time(s); last purchase {lapsed} days before {as_of}")
    statuses = con.execute(f"""
        SELECT as_of, status FROM read_parquet({sql_string(str(memberships / "*" / "memberships.parquet"))},
                                                 hive_partitioning=false)
        WHERE profile_id = {sql_string(profile_id)} AND segment = {sql_string(LAPSED_YOGA)}
        ORDER BY as_of
    """).fetchall()
    for member_as_of, status in statuses:
        lines.append(f"'{LAPSED_YOGA}' at {member_as_of}: {status}")
    crm = con.execute(
        f"SELECT min(value) FROM identity_map "
        f"WHERE profile_id = {sql_string(profile_id)} AND namespace = 'crm_id'"
    ).fetchall()[0][0]
    email_dir = exports / f"destination={EMAIL_DESTINATION}"
    if crm is not None and any(email_dir.rglob("*.csv")):
        sent = con.execute(f"""
            SELECT count(*) FROM read_csv({sql_string(str(email_dir / "**" / "*.csv"))}, union_by_name=true)
            WHERE value = {sql_string(crm)} AND segment = {sql_string(LAPSED_YOGA)}
        """).fetchall()[0][0]
        lines.append(
            f"exported to {EMAIL_DESTINATION} under crm_id {crm}"
            if sent
            else f"not exported to {EMAIL_DESTINATION} (no marketing consent, or not in the segment)"
        )
    return lines


def _train(ingested: Path, config: ProjectConfig, console: Console, result: DemoResult) -> dict[str, Any]:
    """Step 3: train and promote every model."""
    trained: dict[str, Any] = {}
    for name in MODELS:
        with console.status(f"training {name}"):
            trained[name] = model_jobs.train_model(name, ingested, config)
        promotion = evaluate_jobs.promote_model(name, config)
        _step(console, f"3. train {name}")
        fit = trained[name]
        console.print(f"registered {name} v{fit.version} (run {fit.run_id}); {promotion.reason}")
        print_metrics(fit.metrics, f"{name}: test snapshot {fit.snapshots[-1]}")
        print_buckets(fit.buckets)
        console.print(calibration_verdict(name, fit.buckets))
        result.metrics[name] = fit.metrics
        within = fit.buckets.set_index("bucket")["within_interval"]
        result.calibrated[name] = {str(bucket): bool(inside) for bucket, inside in within.items()}

    return trained


def calibration_verdict(name: str, buckets) -> str:
    """Whether every bucket's predicted rate on the test snapshot lies in the 95 % interval of
    its actual rate (:func:`propensity.models.evaluate.bucket_table`), naming those that do not."""
    outside = buckets[~buckets["within_interval"]]
    if outside.empty:
        return f"{name}: predicted and actual rates agree within their 95 % intervals in every bucket"
    said = "; ".join(
        f"{r.bucket} predicted {r.predicted_rate:.3f}, actual {r.actual_rate:.3f} "
        f"[{r.actual_low:.3f}, {r.actual_high:.3f}]"
        for r in outside.itertuples(index=False)
    )
    return f"{name}: predicted rate outside the actual rate's 95 % interval: {said}"


def _score_and_qualify(
    ingested: Path, out: Path, config: ProjectConfig, console: Console, result: DemoResult, dates
) -> None:
    """Step 4: score every model at both dates, qualify segments after each, export the latest."""
    previous, latest = dates
    scores, memberships, exports = out / "scores", out / "segments", out / "exports"
    _step(console, "4. score, qualify segments, export")
    segments_file = Path(config.models_dir).parent / "segments.yaml"
    destinations_file = Path(config.models_dir).parent / "destinations.yaml"
    for as_of in (previous, latest):
        for name in MODELS:
            with console.status(f"scoring {name} at {as_of}"):
                scored = score_jobs.score_model(name, ingested, config, as_of, scores)
            result.buckets[name] = scored.bucket_sizes
            sizes = ", ".join(f"{b} {n:,}" for b, n in scored.bucket_sizes.items())
            console.print(f"{name} at {as_of}: {scored.scored:,} profiles scored ({sizes})")
        with console.status(f"qualifying segments at {as_of}"):
            qualified = segment_jobs.qualify_segments(
                ingested, scores, as_of, segments_file, memberships, config
            )
    print_segments(qualified)
    result.segments = {
        s.segment: {"size": s.size, "realized": s.realized, "existing": s.existing, "exited": s.exited}
        for s in qualified.segments
    }
    exported = export_jobs.export_segments(memberships, latest, destinations_file, exports, config)
    console.print(f"exported {len(exported.destinations)} destinations to {exports}")


def _monitor(ingested: Path, out: Path, config: ProjectConfig, console: Console, latest: dt.date) -> None:
    """Step 5: drift of every model's latest scores against its test snapshot."""
    scores = out / "scores"
    _step(console, "5. monitor")
    for name in MODELS:
        with console.status(f"monitoring {name}"):
            drift = monitor_jobs.monitor_model(name, ingested, scores, latest, config, out / "monitoring")
        worst = max(drift.report.features, key=lambda d: d.psi) if drift.report.features else None
        console.print(
            f"{name}: score PSI {drift.report.score.psi:.3f}"
            + (f", largest feature PSI {worst.psi:.3f} ({worst.label})" if worst else "")
            + (" [bold red]ALERT[/]" if drift.alert else "")
        )


def run(out: Path, config: ProjectConfig, profiles: int, days: int, console: Console) -> DemoResult:
    """Run the whole Luma journey into ``out``; MLflow runs go where the config says."""
    started = time.perf_counter()
    result = DemoResult(out=out, seconds=0.0)
    data_dir, ingested = out / "data", out / "ingested"
    scores, memberships, exports = out / "scores", out / "segments", out / "exports"

    _generate_and_ingest(data_dir, ingested, config, (profiles, days), console)
    # The demo's own look at the data (dates, Sarah) is on DuckDB, as its files are local.
    con = event_jobs.load_events(ingested, config, engine=DuckDBEngine(config)).con
    latest = data_end(con)
    previous = latest - dt.timedelta(days=PREVIOUS_RUN_DAYS)

    trained = _train(ingested, config, console, result)
    _score_and_qualify(ingested, out, config, console, result, (previous, latest))
    _monitor(ingested, out, config, console, latest)
    _step(console, "6. Sarah")
    sarah = result.sarah = _sarah(con, (ingested, memberships, exports), config, console, latest)

    _step(console, "7. report")
    report = report_jobs.write_report("upsell", config, out / "reports" / "upsell.html", scores_dir=scores)
    result.report = report.path
    console.print(f"{report.path} ({report.figures} charts): open it in a browser")

    _step(console, "8. journeys")
    upsell_scores = scores / "model=upsell" / f"as_of={latest}"
    result.journeys = journey_demo.run(ingested, config, out / "journeys", upsell_scores, latest, console)

    _step(console, "9. the yoga campaign: holdout and incremental revenue")
    result.campaign = campaign_demo.run(data_dir, ingested, config, out / "measure", console)

    _step(console, "10. who the uplift model would target next")
    result.uplift = uplift_demo.run(data_dir, ingested, config, out / "uplift", latest, console)

    result.seconds = time.perf_counter() - started
    # What notebooks and the README's pictures start from (notebooks/feature_importance.ipynb).
    write_json(
        {
            "as_of": latest,
            "previous_as_of": previous,
            "ingested": ingested.resolve(),
            "scores": scores.resolve(),
            "sarah": sarah,
            "measure": (out / "measure" / f"as_of={result.campaign['as_of']}").resolve(),
            "uplift": result.uplift,
            "models": {name: fit.version for name, fit in trained.items()},
            "calibrated_buckets": result.calibrated,
            "tracking_uri": tracking.tracking_uri(config),
        },
        out / "demo.json",
    )
    _summary(console, result, trained, config)
    return result


def _generate_and_ingest(
    data_dir: Path, ingested: Path, config: ProjectConfig, size: tuple[int, int], console: Console
) -> None:
    """Steps 1 and 2: the Luma world's events (``size``: profiles, days) into ``data_dir``, then
    ingested (quarantining bad rows) into ``ingested``."""
    profiles, days = size
    with console.status("generating synthetic Luma events"):
        settings = GeneratorSettings(profiles=profiles, days=days, seed=config.seed, campaigns=(LUMA_YOGA,))
        generated = generate(settings, data_dir)
    _step(console, "1. generate")
    console.print(
        f"{generated.events:,} events for {generated.people:,} people ({generated.purchases:,} purchases) "
        f"in {data_dir}"
    )

    with console.status("validating, hashing, de-duplicating and stitching identities"):
        summary = ingest_jobs.ingest(data_dir, ingested, config, on_bad_rows="quarantine")
    _step(console, "2. ingest and stitch identities")
    print_summary(summary, f"ingest -> {ingested}")


def _sarah(
    con: duckdb.DuckDBPyConnection,
    places: tuple[Path, Path, Path],
    config: ProjectConfig,
    console: Console,
    latest: dt.date,
) -> str | None:
    """Step 6: Sarah found (``places``: the ingested events, memberships and exports), her story
    told and her upsell score explained; her profile id (None: not found)."""
    ingested, memberships, exports = places
    sarah = _find_sarah(con, memberships, exports, latest)
    if sarah is not None:
        for line in _sarah_story(con, sarah, memberships, exports, latest):
            console.print(f"Sarah ({sarah}) {line}")
        print_explanation(explain_jobs.explain_profile("upsell", ingested, config, sarah, latest))
    return sarah


def _summary(console: Console, result: DemoResult, trained: dict[str, Any], config: ProjectConfig) -> None:
    table = Table(title=f"Luma demo in {result.seconds:.0f} s")
    columns = (
        "model",
        "version",
        "test AUC (95% interval)",
        "logistic RFM",
        "recency",
        "positives",
        "scored high/medium/low",
    )
    for column in columns:
        table.add_column(column, justify="right" if column != "model" else "left")
    for name, fit in trained.items():
        m = fit.metrics
        interval = (
            f" ({m['test_auc_ci_low']:.3f}-{m['test_auc_ci_high']:.3f})" if "test_auc_ci_low" in m else ""
        )
        table.add_row(
            name,
            fit.version,
            f"{m['test_auc']:.3f}{interval}",
            f"{m.get('baseline_logreg_auc', float('nan')):.3f}",
            f"{m.get('baseline_recency_auc', float('nan')):.3f}",
            f"{int(m['test_positives']):,}" if "test_positives" in m else "",
            "/".join(f"{result.buckets.get(name, {}).get(b, 0):,}" for b in ("high", "medium", "low")),
        )
    console.print(table)
    segments = Table(title="segments at the latest as-of")
    for column in ("segment", "size", "realized", "existing", "exited"):
        segments.add_column(column, justify="right" if column != "segment" else "left")
    for name, counts in result.segments.items():
        segments.add_row(name, *(f"{counts[k]:,}" for k in ("size", "realized", "existing", "exited")))
    console.print(segments)
    uri = tracking.tracking_uri(config)
    console.print(
        f"outputs in {result.out}/ (data, ingested, scores, segments, exports, monitoring, reports)\n"
        f"MLflow: {uri}; browse with `.venv/bin/mlflow ui --backend-store-uri {uri}`"
    )
