"""The score job: a registered model applied to its population at an as-of date.

Written once for both engines (:func:`~propensity.pipeline.jobs.events.engine_for`): the job
loads the model and the events, checks the as-of and the model's features, and hands the
engine a :class:`~propensity.features.engine.ScoringPlan` whose scorer is
:func:`propensity.models.scoring.score_batch`. DuckDB streams the population in profile
partitions through a prefetch thread; Spark applies the scorer in ``mapInArrow``; both write
``OUT/model=<name>/as_of=<date>/`` ranked, whole or not at all. One scoring run is logged to
MLflow either way.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow

from propensity.core.config import ProjectConfig
from propensity.core.errors import UserError
from propensity.core.score_table import IDENTITY_COLUMNS, histogram_bins
from propensity.features.build.feature_set import FeatureSet
from propensity.features.build.rules import Rule, parse_rule
from propensity.features.build.selection import (
    attribute_features,
    feature_count_note,
)
from propensity.features.build.snapshots import windows_before_data
from propensity.features.engine import Engine, Events, Progress, Scored, Scorer, ScoringPlan
from propensity.models import tracking
from propensity.models.estimator import PropensityModel
from propensity.models.scoring import is_uplift, score_batch, unused_feature_types
from propensity.pipeline.jobs.config_files import load_model_config
from propensity.pipeline.jobs.events import (
    engine_for,
    feature_set,
    load_events,
    model_vocabulary,
    scoring_feature_set,
)

__all__ = ["Progress", "ScoreRun", "checked_as_of", "model_population", "prepare", "score_model"]


@dataclass(frozen=True)
class ScoreRun:
    """A written score partition and what went into it."""

    model: str
    version: str
    as_of: dt.date
    out: Path  # the partition directory
    profiles: int  # profiles with a feature row at as_of
    eligible: int  # of those, in the model's population
    scored: int
    bucket_sizes: dict[str, int]
    run_id: str
    seconds: float
    population: str = ""  # the population rule ``eligible`` profiles meet
    features: int = 0  # the model's features (as trained: its own categories)
    feature_note: str = ""
    warnings: list[str] = field(default_factory=list)  # e.g. windows longer than the data


@dataclass
class Prepared:
    """A registered model and the events it scores, checked against each other."""

    model: PropensityModel
    version: str
    loaded: Events
    fs: FeatureSet
    population: Rule
    as_of: dt.date


def prepare(
    model_name: str,
    events: str | Path,
    config: ProjectConfig,
    as_of: dt.date | None,
    alias: str | None,
    version: str | None,
    engine: Engine | None = None,
) -> Prepared:
    """Load the model and the events; refuse an as-of or a model the data cannot serve."""
    if version and alias:
        raise UserError("give --version or --alias, not both")
    client = tracking.configure(config)
    model, mv = tracking.load_propensity_model(client, model_name, version=version, alias=alias)
    loaded = load_events(events, config, engine=engine)
    as_of = checked_as_of(as_of, loaded.data_end())
    fs = feature_set(loaded, config, before=as_of, **model_vocabulary(model.metadata))
    fs = scoring_feature_set(fs, loaded, model, as_of, config)
    population = model_population(model, model_name, str(mv.version), fs, config)
    return Prepared(model, str(mv.version), loaded, fs, population, as_of)


def checked_as_of(as_of: dt.date | None, cutoff: dt.date) -> dt.date:
    """``as_of`` (default: ``cutoff``, the day after the last event); after the data: UserError."""
    as_of = as_of or cutoff
    if as_of > cutoff:
        raise UserError(
            f"--as-of {as_of} is after the data: the last event is on {cutoff - dt.timedelta(days=1)}, "
            f"so the latest as-of is {cutoff}"
        )
    return as_of


def model_population(
    model: PropensityModel, model_name: str, version: str, fs: FeatureSet, config: ProjectConfig
) -> Rule:
    """The model's population rule, once every feature the model uses is one ``fs`` can build
    (else a UserError naming one); shared by the DuckDB and Spark score jobs."""
    buildable = set(fs.names()) | set(attribute_features(fs))
    missing = [name for name in model.feature_names if name not in buildable]
    if missing:
        raise UserError(
            f"model '{model_name}' v{version} uses {len(missing)} features these events and the "
            f"project config cannot build, e.g. `{missing[0]}` (check features.windows_days, "
            f"categories and traits against the config it was trained with)"
        )
    population_text = model.metadata.get("population") or load_model_config(model_name, config).population
    names = fs.names(model_features_only=False)
    return parse_rule(population_text, names, f"model '{model_name}': population")


def _scorer(prep: Prepared, model_name: str, factors: int, scored_at: dt.datetime) -> Scorer:
    """The model's batch scorer: the same function on a DuckDB thread and on Spark's executors."""
    model, version, as_of = prep.model, prep.version, prep.as_of

    def score(batch, identity_columns: list[str]):
        return score_batch(
            model,
            batch,
            model_name=model_name,
            model_version=version,
            as_of=as_of,
            factors=factors,
            scored_at=scored_at,
            identity_columns=identity_columns,
        )

    return score


def _plan(
    prep: Prepared,
    model_name: str,
    config: ProjectConfig,
    factors: int,
    chunk_rows: int,
    progress: Progress | None,
) -> ScoringPlan:
    """What the engine needs to score ``prep``'s model: its features, population and scorer."""
    scored_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return ScoringPlan(
        fs=prep.fs,
        as_of=prep.as_of,
        population=prep.population,
        feature_names=list(prep.model.feature_names),
        unused=unused_feature_types(prep.model),
        scorer=_scorer(prep, model_name, factors, scored_at),
        identity_namespaces=IDENTITY_COLUMNS,
        chunk_rows=chunk_rows,
        partitions=config.scoring.profile_partitions,
        progress=progress,
        uplift=is_uplift(prep.model),
    )


def score_model(
    model_name: str,
    events: str | Path,
    config: ProjectConfig,
    as_of: dt.date | None = None,
    out: str | Path | None = None,
    alias: str | None = None,
    version: str | None = None,
    factors: int | None = None,
    chunk_rows: int | None = None,
    progress: Progress | None = None,
) -> ScoreRun:
    """Score the model's population at ``as_of`` (default: the day after the last event).

    Writes ``OUT/model=<name>/as_of=<date>/`` (``OUT`` defaults to the project's
    ``WORK_DIR/scores``; on Spark any Hadoop path) atomically; a re-run replaces the partition
    with identical rows but for ``scored_at``. ``chunk_rows`` is the Arrow batch scored at once;
    on Spark ``progress`` hears once, at the end. Logs a scoring run to the model's MLflow
    experiment.
    """
    started = time.perf_counter()
    engine = engine_for(config)
    prep = prepare(model_name, events, config, as_of, alias, version, engine)
    factors = config.scoring.factors if factors is None else factors
    if factors < 0:
        raise UserError(f"--factors must be 0 or more, got {factors}")
    root = engine.output_path(out if out is not None else Path(config.work_dir) / "scores").rstrip("/")
    target = f"{root}/model={model_name}/as_of={prep.as_of}"
    plan = _plan(prep, model_name, config, factors, chunk_rows or config.scoring.chunk_rows, progress)
    scored = engine.score(prep.loaded, plan, target)
    run_id = log_scoring_run(engine.name, model_name, prep, target, scored)
    return ScoreRun(
        model=model_name,
        version=prep.version,
        as_of=prep.as_of,
        out=Path(target),
        profiles=scored.profiles,
        eligible=scored.eligible,
        scored=scored.scored,
        bucket_sizes=scored.bucket_sizes,
        run_id=run_id,
        seconds=time.perf_counter() - started,
        population=prep.population.text,
        features=len(prep.model.feature_names),
        feature_note=feature_count_note(
            prep.fs, len(prep.model.feature_names), f"from model v{prep.version}"
        ),
        warnings=_window_warnings(prep, config),
    )


def _window_warnings(prep: Prepared, config: ProjectConfig) -> list[str]:
    """Windows at the as-of that reach before the first event (see :func:`windows_before_data`)."""
    span = prep.loaded.span()
    window = windows_before_data(config.features.windows_days, span[0], prep.as_of) if span else None
    return [window] if window else []


def log_scoring_run(engine: str, model_name: str, prep: Prepared, target: str, scored: Scored) -> str:
    """The scoring run in the model's MLflow experiment: counts, bucket sizes, score histogram."""
    from propensity.models.plots import save_histogram

    mlflow.set_experiment(model_name)
    with mlflow.start_run(run_name=f"score v{prep.version} at {prep.as_of}") as run:
        mlflow.set_tags(
            {
                "step": "score",
                "engine": engine,
                "scored_version": prep.version,
                "as_of": str(prep.as_of),
                "output": target,
                "git_commit": tracking.git_commit() or "unknown",
            }
        )
        mlflow.log_metrics(
            {
                "profiles": scored.profiles,
                "eligible": scored.eligible,
                "scored": scored.scored,
                **{f"bucket_{b}": n for b, n in scored.bucket_sizes.items()},
            }
        )
        if scored.scored:
            histogram = {"bins": histogram_bins(), "counts": scored.histogram}
            mlflow.log_dict(histogram, "scoring/score_histogram.json")
            sampled = len(scored.sample) != scored.scored
            title = "Scores of this run" + (f" (sample of {len(scored.sample):,})" if sampled else "")
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "score_histogram.png"
                save_histogram(scored.sample, path, title=title, xlabel="score (0-100)")
                mlflow.log_artifact(str(path), "scoring")
        return run.info.run_id
