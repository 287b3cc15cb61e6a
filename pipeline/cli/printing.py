"""Rich tables for the summaries the jobs return: what a person reads in the terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from propensity.pipeline.cli.options import console, err_console

if TYPE_CHECKING:  # the jobs import DuckDB, MLflow and LightGBM: not needed to print
    from propensity.pipeline.jobs.explain import Explanation
    from propensity.pipeline.jobs.ingest import IngestSummary
    from propensity.pipeline.jobs.score import ScoreRun


def print_summary(summary: IngestSummary, title: str) -> None:
    """The validate/ingest summary as rich tables."""
    counts = Table(title=title, show_header=False)
    for key in ("rows_in", "rows_written", "duplicates_dropped", "rows_quarantined", "bad_rows"):
        counts.add_row(key.replace("_", " "), f"{getattr(summary, key):,}")
        if key == "duplicates_dropped" and summary.conflicting_duplicates:
            counts.add_row("  of which conflicting", f"{summary.conflicting_duplicates:,}")
    if summary.profiles is not None:
        counts.add_row("profiles", f"{summary.profiles:,}")
        counts.add_row("known profiles", f"{summary.known_profiles:,}")
    counts.add_row("time range", f"{summary.first_event} .. {summary.last_event}")
    if summary.orders is not None:
        counts.add_row("purchase rows / orders", f"{summary.purchase_rows:,} / {summary.orders:,}")
    console.print(counts)
    for values, label in (
        (summary.events_by_type, "event type"),
        (summary.events_by_channel, "channel"),
        (summary.identities_by_namespace, "identity namespace"),
        (summary.bad_rows_by_reason, "bad-row reason"),
    ):
        if not values:
            continue
        table = Table(show_header=True)
        table.add_column(label)
        table.add_column("count", justify="right")
        for name, count in values.items():
            table.add_row(_e(name), f"{count:,}")
        console.print(table)
    collapses = summary.identity_collapses
    for reason in sorted({c["reason"] for c in collapses}):
        group = [c for c in collapses if c["reason"] == reason]
        console.print(
            f"[yellow]identity guardrail ({_e(reason)}):[/] split {len(group)} components of "
            f"{sum(c['identities'] for c in group):,} identities into "
            f"{sum(c['profiles_after_split'] for c in group):,} profiles "
            f"({sum(c['separated_identities'] for c in group):,} identities kept apart)"
        )
    for warning in summary.warnings:
        console.print(f"[yellow]warning:[/] {_e(warning)}")
    console.print(
        f"rows in {summary.rows_in:,} = written {summary.rows_written:,} + duplicates "
        f"{summary.duplicates_dropped:,} + bad {summary.bad_rows:,}"
    )


def _e(value: Any) -> str:
    """User or data text (paths, names, values, rules) escaped, so rich prints it as written
    instead of reading ``[a-z]`` as markup."""
    return escape(str(value))


BASELINE_COLUMNS = {"logreg": "logistic RFM", "recency": "recency", "bgnbd": "BG/NBD"}


def _with_interval(metrics: dict, key: str) -> str:
    """``0.7812`` over ``[0.770, 0.792]``: the value and its bootstrap interval, when logged."""
    value = metrics.get(key)
    if value is None:
        return ""
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    return f"{value:.4f}" if low is None or high is None else f"{value:.4f}{_break()}[{low:.3f}, {high:.3f}]"


def _break() -> str:
    """Between a figure and its interval: a new line in a terminal (narrow columns), a space in
    a file or pipe, where every row stays one line a script can read."""
    return "\n" if console.is_terminal else " "


UPLIFT_ROWS = (
    ("qini", "Qini coefficient"),
    ("uplift_at_20", "uplift, top 20 %"),
    ("incremental_top20_by_uplift", "incremental conv., top 20 % by uplift"),
    ("incremental_top20_by_propensity", "incremental conv., top 20 % by propensity"),
    ("incremental_top20_uplift_minus_propensity", "uplift targeting - propensity targeting"),
)


def print_uplift_metrics(metrics: dict, title: str, note: str | None = None) -> None:
    """An uplift model's test figures with their 95 % intervals; on simulated data beside what
    the true effects give (the oracle's Qini, incremental conversions from the true effects)."""

    def cell(key: str) -> str:
        value, low, high = (metrics.get(f"{key}{end}") for end in ("", "_low", "_high"))
        if value is None:
            return ""
        return f"{value:.4f}" if low is None else f"{value:.4f}\n[{low:.4f}, {high:.4f}]"

    truth = "test_oracle_qini" in metrics
    table = Table(title=title, caption=note)
    for column in ["metric", "model", *(["true effects"] if truth else [])]:
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key, label in UPLIFT_ROWS:
        true_key = "test_oracle_qini" if key == "qini" else f"test_true_{key}"
        table.add_row(label, cell(f"test_{key}"), *([cell(true_key)] if truth else []))
    rows, treated = metrics.get("test_uplift_rows", 0), metrics.get("test_uplift_treated", 0)
    positives = metrics.get("test_uplift_positives", 0)
    table.add_row("rows (treated) / positives", f"{rows:,.0f} ({treated:,.0f}) / {positives:,.0f}")
    console.print(table)


def print_metrics(metrics: dict, title: str, note: str | None = None) -> None:
    """Model vs baselines vs oracle, side by side, with 95 % bootstrap intervals in brackets
    and the number of positives they rest on; ``note`` (why this model) under the table."""
    prefix = "test_" if "test_auc" in metrics else "eval_"
    baselines = [b for b in BASELINE_COLUMNS if f"baseline_{b}_auc" in metrics]
    oracle = metrics.get(f"{'' if prefix == 'test_' else prefix}oracle_auc")
    table = Table(title=title, caption=note)
    columns = ["metric", "model", *(BASELINE_COLUMNS[b] for b in baselines)] + (["oracle"] if oracle else [])
    for column in columns:
        table.add_column(column, justify="right" if column != "metric" else "left")
    for key, label in (
        ("auc", "AUC"),
        ("average_precision", "avg precision"),
        ("brier", "Brier score"),
        ("log_loss", "log loss"),
        ("lift_at_10", "lift top 10 %"),
    ):
        row = [label, _with_interval(metrics, f"{prefix}{key}")]
        row += [_with_interval(metrics, f"baseline_{b}_{key}") for b in baselines]
        if oracle:
            row.append(f"{oracle:.4f}" if key == "auc" else "")
        table.add_row(*row)
    blank = [""] * (len(columns) - 2)
    for key, label in (
        ("ece", "calibration error"),
        ("predicted_rate", "mean predicted"),
        ("base_rate", "base rate"),
    ):
        table.add_row(label, _with_interval(metrics, f"{prefix}{key}"), *blank)
    positives, rows = metrics.get(f"{prefix}positives"), metrics.get(f"{prefix}rows")
    if positives is not None:
        table.add_row("positives/rows", f"{positives:,.0f}/{rows or 0:,.0f}", *blank)
    ratio = metrics.get("auc_to_oracle", metrics.get("eval_auc_to_oracle"))
    if ratio is not None:
        # On the rows the oracle covers (whole simulated people); the share it covers beside it.
        coverage = metrics.get("oracle_coverage", metrics.get("eval_oracle_coverage"))
        share = f" ({coverage:.0%} of rows)" if coverage is not None else ""
        key = "auc_to_oracle" if "auc_to_oracle" in metrics else "eval_auc_to_oracle"
        low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
        interval = f"{_break()}[{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
        table.add_row("AUC / oracle AUC", f"{ratio:.4f}{share}{interval}", *blank)
    console.print(table)


def print_buckets(buckets) -> None:
    """Predicted vs actual rate per bucket."""
    table = Table(title="buckets: predicted vs actual")
    for column in buckets.columns:
        table.add_column(_e(column), justify="right")
    for row in buckets.itertuples(index=False):
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else _e(v) for v in row])
    console.print(table)


def print_score_run(run: ScoreRun) -> None:
    """How many profiles were eligible and scored, and the bucket sizes."""
    console.print(
        f"{_e(run.model)} v{run.version} at {run.as_of}: {population_counts(run)}; "
        f"{run.scored:,} scored in {run.seconds:.1f}s -> {_e(run.out)} (run {run.run_id})"
    )
    if run.feature_note:
        console.print(f"feature count: {_e(run.feature_note)}")
    table = Table(title="bucket sizes")
    for column in ("bucket", "profiles", "share"):
        table.add_column(column, justify="right")
    for bucket, count in run.bucket_sizes.items():
        table.add_row(bucket, f"{count:,}", f"{count / max(run.scored, 1):.1%}")
    console.print(table)


def population_counts(run: ScoreRun) -> str:
    """What the two counts of a score run are: profiles known at the date (everyone the identity
    graph held then) and those the population rule admits, with the difference named."""
    outside = run.profiles - run.eligible
    rule = f" `{_e(run.population)}`" if run.population else ""
    return (
        f"{run.eligible:,} profiles eligible of {run.profiles:,} known at the date: "
        f"{outside:,} outside the population{rule}"
    )


def print_warnings(warnings: list[str]) -> None:
    """Warnings about the data (e.g. windows longer than the history), once each, on stderr."""
    for warning in warnings:
        err_console.print(f"[yellow]warning:[/] {_e(warning)}", highlight=False, soft_wrap=True)


def _value(value: Any) -> str:
    if value is None:
        return "missing"
    return f"{value:g}" if isinstance(value, float) else str(value)


def print_explanation(explanation: Explanation) -> None:
    """A profile's score and factors, or the population conditions it fails."""
    e = explanation
    if not e.eligible:
        console.print(
            f"{_e(e.profile_id)} is not in the {_e(e.model)} population at {e.as_of}; it fails: "
            + "; ".join(f"`{_e(c)}`" for c in e.failed_conditions)
        )
        for column, value in e.values.items():
            console.print(f"  {_e(column)} = {_e(_value(value))}")
        return
    table = Table(
        title=f"{_e(e.model)} v{e.version} for {_e(e.profile_id)} at {e.as_of}: "
        f"probability {e.probability:.3f}, score {e.score}, bucket {e.bucket}"
    )
    for column in ("factor", "value", "impact (log-odds)"):
        table.add_column(column)
    for factor in e.factors:
        table.add_row(_e(factor["label"]), _e(_value(factor["value"])), f"{factor['impact']:+.3f}")
    console.print(table)


def print_segments(result) -> None:
    """Per segment of a SegmentsResult: size, transitions and profiles held back for consent."""
    since = f" (statuses against {result.previous_as_of})" if result.previous_as_of else " (first as-of)"
    table = Table(title=f"segments at {result.as_of}{since}")
    for column in ("segment", "size", "realized", "existing", "exited", "held back (consent)"):
        table.add_column(column, justify="left" if column == "segment" else "right")
    for c in result.segments:
        table.add_row(
            _e(c.segment),
            f"{c.size:,}",
            f"{c.realized:,}",
            f"{c.existing:,}",
            f"{c.exited:,}",
            f"{c.held_back:,}",
        )
    console.print(table)
    console.print(f"wrote {result.rows:,} memberships of {result.profiles:,} profiles to {_e(result.out)}")
    if result.stale_later:
        dates = ", ".join(str(d) for d in result.stale_later)
        console.print(
            f"[yellow]stale:[/] the statuses stored at {dates} were computed against another previous "
            f"as-of; re-run `propensity segments --as-of DATE` for each, in date order"
        )


def print_exports(result) -> None:
    """Per destination and segment of an ExportResult: what was written and who was left out."""
    table = Table(title=f"exports at {result.as_of}")
    for column in (
        "destination",
        "action",
        "identities",
        "segment",
        "profiles",
        "identity rows",
        "no allowed identity",
        "held back (consent)",
    ):
        numeric = column in ("profiles", "identity rows", "no allowed identity", "held back (consent)")
        table.add_column(column, justify="right" if numeric else "left")
    for d in result.destinations:
        for e in d.segments:
            table.add_row(
                _e(d.destination),
                _e(d.marketing_action),
                _e(", ".join(d.identities)),
                _e(e.segment),
                f"{e.profiles:,}",
                f"{e.rows:,}",
                f"{e.skipped_no_identity:,}",
                f"{e.held_back_consent:,}",
            )
    console.print(table)
    console.print(f"wrote {sum(len(d.segments) for d in result.destinations)} files under {_e(result.out)}")


def print_drift(result) -> None:
    """A MonitorResult: PSI, missing and out-of-range shares for the score and top features."""
    report = result.report
    table = Table(
        title=f"{_e(result.model)} v{result.version}: {result.as_of} against {result.reference_as_of} "
        f"(PSI alert at {report.psi_threshold})"
    )
    for column in ("variable", "PSI", "missing (ref -> now)", "out of range"):
        table.add_column(column, justify="left" if column == "variable" else "right")
    for drift in (report.score, *report.features):
        flag = " [bold red]drift[/]" if drift.psi >= report.psi_threshold else ""
        table.add_row(
            _e(drift.label),
            f"{drift.psi:.4f}{flag}",
            f"{drift.reference_missing:.1%} -> {drift.current_missing:.1%}",
            "" if drift.out_of_range is None else f"{drift.out_of_range:.1%}",
        )
    rate = report.base_rate
    if rate is not None:
        flag = " [bold red]moved[/]" if rate.moved else ""
        table.add_row(
            f"Base rate at {rate.labelled_as_of} ({rate.positives:,}/{rate.rows:,}) vs "
            f"{rate.reference_as_of} ({rate.reference_positives:,}/{rate.reference_rows:,})",
            f"{rate.rate:.4f} [{rate.rate_low:.4f}, {rate.rate_high:.4f}] vs {rate.reference_rate:.4f}; "
            f"difference [{rate.difference_low:+.4f}, {rate.difference_high:+.4f}]{flag}",
            "",
            "",
        )
    console.print(table)
    console.print(f"report {_e(result.report_path)}, plot {_e(result.plot_path)}, MLflow run {result.run_id}")
    if rate is None:
        console.print("base rate: no snapshot after the test snapshot is labelled yet by this as-of")
    if report.alert:
        console.print(
            f"[bold red]alert:[/] {_e(', '.join(report.drifted))} (PSI >= {report.psi_threshold}"
            " or a base rate moved beyond its interval)"
        )
