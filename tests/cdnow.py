"""CDNOW (real CD purchases, 23,570 customers acquired in early 1997, to mid-1998) in our
event contract, and how written scores compare with the classic baselines on it.

The data ship with the ``lifetimes`` package (a dev dependency). Its file is found with
``importlib.util.find_spec`` and read directly: importing ``lifetimes`` itself may fail on
a recent numpy, and only the text file is needed.

Shared by the suite (``tests/test_cdnow.py``, a small slice) and ``benchmarks/cdnow.py``
(all customers, through the CLI).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from propensity.models.bgnbd import fit_bgnbd
from propensity.models.bootstrap import bootstrap_intervals

# The repeat-purchase question of the issue: 90 days from 1997-10-01 (the data end 1998-06-30).
AS_OF = dt.date(1997, 10, 1)
HORIZON_DAYS = 90


def model_yaml(horizon_days: int = HORIZON_DAYS) -> str:
    """The three-line model config of a repeat purchase within ``horizon_days``."""
    return f"""name: cdnow_repeat
population: "purchase_count_365d >= 1"
outcome: {{event_type: purchase, horizon_days: {horizon_days}}}
"""


MODEL_YAML = model_yaml()


def cdnow_path() -> Path:
    """``CDNOW_master.txt`` inside the installed ``lifetimes`` package (not imported)."""
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the lifetimes package is not installed: pip install -e '.[dev]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "CDNOW_master.txt"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the lifetimes package")
    return path


def cdnow_events(every: int = 1) -> pd.DataFrame:
    """CDNOW as purchase events: one row per customer and day (the day's orders summed),
    ``timestamp`` (noon of the day), ``event_type`` 'purchase', ``crm_id``, ``revenue``,
    ``channel``; sorted by time. ``every``: keep every n-th customer (ids are numbered in
    order of acquisition, so a slice keeps every cohort)."""
    raw = pd.read_csv(
        cdnow_path(),
        sep=r"\s+",
        header=None,
        skiprows=1,
        names=["customer", "date", "cds", "value"],
        dtype={"customer": int, "date": str, "cds": int, "value": float},
    )
    raw = raw[raw["customer"] % every == 0]
    days = raw.groupby(["customer", "date"], as_index=False)["value"].sum()
    events = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(days["date"], format="%Y%m%d") + pd.Timedelta(hours=12),
            "event_type": "purchase",
            "crm_id": "CD" + days["customer"].astype(str).str.zfill(5),
            "revenue": days["value"].round(2),
            "channel": "web",
        }
    )
    return events.sort_values(["timestamp", "crm_id"]).reset_index(drop=True)


def write_cdnow(out: Path, every: int = 1) -> pd.DataFrame:
    """Write :func:`cdnow_events` as ``out/events.parquet``; returns the events."""
    out.mkdir(parents=True, exist_ok=True)
    events = cdnow_events(every)
    events.to_parquet(out / "events.parquet", index=False)
    return events


def rfm(events: pd.DataFrame, as_of: dt.date) -> pd.DataFrame:
    """Per customer with a purchase before ``as_of``: days since the last and first purchase,
    purchase days and revenue (index ``crm_id``)."""
    before = events[events["timestamp"] < pd.Timestamp(as_of)]
    day = (pd.Timestamp(as_of) - before["timestamp"].dt.floor("D")).dt.days
    grouped = before.assign(day=day).groupby("crm_id")
    return pd.DataFrame(
        {
            "recency": grouped["day"].min(),
            "age": grouped["day"].max(),
            "frequency": grouped["day"].nunique(),
            "monetary": grouped["revenue"].sum(),
        }
    )


def outcome(events: pd.DataFrame, as_of: dt.date, horizon_days: int) -> set[str]:
    """Customers with a purchase in ``[as_of, as_of + horizon)``."""
    start = pd.Timestamp(as_of)
    window = events[
        (events["timestamp"] >= start) & (events["timestamp"] < start + pd.Timedelta(days=horizon_days))
    ]
    return set(window["crm_id"])


def _log_rfm(frame: pd.DataFrame) -> np.ndarray:
    return np.log1p(frame[["recency", "frequency", "monetary", "age"]].clip(lower=0).to_numpy(float))


# LightGBM on RFM over stacked snapshots, the strongest simple reference of the issue: weekly
# snapshots from the first week of the data, early stopping on the last snapshot whose labels
# end by the as-of date (trained on those whose labels end before it), then a refit on every
# snapshot with that round count. Small trees, recency decreasing and counts / revenue increasing.
STACKED_LIGHTGBM = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_child_samples": 100,
    "monotone_constraints": [-1, 1, 1, 0],
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 1,
    "verbosity": -1,
}


def stacked_lightgbm(events: pd.DataFrame, as_of: dt.date, horizon_days: int, seed: int = 0) -> pd.Series:
    """Probabilities at ``as_of`` (index ``crm_id``) of LightGBM on RFM (recency, frequency,
    monetary, age) over weekly stacked snapshots labelled before ``as_of`` (see
    :data:`STACKED_LIGHTGBM`)."""
    import lightgbm as lgb

    columns = ["recency", "frequency", "monetary", "age"]
    last = as_of - dt.timedelta(days=horizon_days)
    first = events["timestamp"].min().date() + dt.timedelta(days=7)
    dates = [last - dt.timedelta(days=7 * i) for i in range((last - first).days // 7 + 1)]
    frames = []
    for date in sorted(dates):
        frame = rfm(events, date)
        frames.append(
            frame.assign(label=frame.index.isin(list(outcome(events, date, horizon_days))), as_of=date)
        )
    stacked = pd.concat(frames)
    params = STACKED_LIGHTGBM | {"seed": seed}
    train = stacked[stacked["as_of"] <= last - dt.timedelta(days=horizon_days)]
    valid = stacked[stacked["as_of"] == last]
    stopped = lgb.train(
        params,
        lgb.Dataset(train[columns], train["label"].astype(int)),
        2000,
        valid_sets=[lgb.Dataset(valid[columns], valid["label"].astype(int))],
        callbacks=[lgb.early_stopping(50, verbose=False)],
    )
    refit = lgb.train(
        params, lgb.Dataset(stacked[columns], stacked["label"].astype(int)), max(stopped.best_iteration, 1)
    )
    now = rfm(events, as_of)
    return pd.Series(refit.predict(now[columns]), index=now.index)


def baseline_scores(
    events: pd.DataFrame, customers: pd.Index, as_of: dt.date, horizon_days: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Scores of ``customers`` at ``as_of`` from data before it only: logistic regression on
    log RFM trained on one snapshot (``as_of - horizon``, labelled up to ``as_of``), LightGBM on
    RFM over stacked snapshots (:func:`stacked_lightgbm`), BG/NBD
    fitted on every customer at ``as_of``, and recency (fewer days since the last purchase
    ranks higher)."""
    train_as_of = as_of - dt.timedelta(days=horizon_days)
    train = rfm(events, train_as_of)
    bought = outcome(events, train_as_of, horizon_days)
    y_train = train.index.isin(list(bought)).astype(int)
    logistic = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    logistic.fit(_log_rfm(train), y_train)
    now = rfm(events, as_of)
    x, t_x, T = (
        (now["frequency"] - 1).to_numpy(float),
        (now["age"] - now["recency"]).to_numpy(float),
        now["age"],
    )
    bgnbd = fit_bgnbd(x, t_x, T.to_numpy(float))
    now["bgnbd"] = bgnbd.purchase_probability(x, t_x, T.to_numpy(float), horizon_days)
    now["logistic"] = logistic.predict_proba(_log_rfm(now))[:, 1]
    now["lightgbm"] = stacked_lightgbm(events, as_of, horizon_days, seed)
    now = now.reindex(customers)
    return {
        "logistic": now["logistic"].to_numpy(),
        "lightgbm": now["lightgbm"].to_numpy(),
        "bgnbd": now["bgnbd"].to_numpy(),
        "recency": -now["recency"].to_numpy(float),
    }


def compare(
    events: pd.DataFrame,
    scores: pd.DataFrame,
    as_of: dt.date,
    horizon_days: int,
    resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """AUC, average precision and Brier of the written probabilities (``scores``: ``crm_id``,
    ``probability``) against what happened, beside the baselines, each with a bootstrap 95 %
    interval, and the paired interval of the model minus each baseline (``model-<name>``).
    Brier only for scores that are probabilities (not recency)."""
    scores = scores.drop_duplicates("crm_id").set_index("crm_id")
    y = scores.index.isin(list(outcome(events, as_of, horizon_days))).astype(float)
    named = {"model": scores["probability"].to_numpy(float)} | baseline_scores(
        events, scores.index, as_of, horizon_days, seed
    )
    missing = {k: int(np.isnan(v).sum()) for k, v in named.items() if np.isnan(v).any()}
    if missing:
        raise ValueError(f"scored customers without a baseline score: {missing}")
    intervals = bootstrap_intervals(
        y,
        named,
        {"model", "logistic", "lightgbm", "bgnbd"},
        resamples=resamples,
        seed=seed,
        reference="model",
    )
    out: dict = {"rows": len(y), "positives": int(y.sum())}
    for name, metrics in intervals.items():
        for metric, (low, high) in metrics.items():
            if metric == "log_loss":
                continue
            entry = {"low": round(low, 4), "high": round(high, 4)}
            if name in named:
                entry["value"] = round(_metric(metric, y, named[name]), 4)
            out.setdefault(name, {})[metric] = entry
    return out


def written_scores(scores_dir: Path, model: str, as_of: dt.date) -> pd.DataFrame:
    """The probabilities ``score`` wrote for ``model`` at ``as_of``, by ``crm_id`` (which the
    score table carries for known profiles)."""
    written = pd.read_parquet(scores_dir / f"model={model}" / f"as_of={as_of}" / "part-0.parquet")
    return written.dropna(subset=["crm_id"])[["crm_id", "probability"]]


def _metric(metric: str, y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    if metric == "auc":
        return float(roc_auc_score(y, score))
    if metric == "average_precision":
        return float(average_precision_score(y, score))
    return float(brier_score_loss(y, score))


def run_cli(
    work: Path,
    every: int = 1,
    model_yaml: str = MODEL_YAML,
    seed: int = 0,
    as_of: dt.date = AS_OF,
    horizon_days: int = HORIZON_DAYS,
    promote: bool = False,
    in_process: bool = False,
) -> dict:
    """CDNOW through the command line: ``ingest``, ``train`` (the three-line model config, whose
    horizon must be ``horizon_days``) with the data before ``as_of``, ``score`` at it; then
    :func:`compare` of the written probabilities. With ``promote``, ``promote`` runs after
    ``train`` and the champion's scores are compared (the challenger's otherwise). ``work`` is
    emptied and holds everything, MLflow store included. Returns :func:`compare`'s figures plus
    the seconds of each step and, with ``promote``, its output (``promotion``). ``in_process``:
    each command runs in this process through Typer's test runner (the suite: the same app and
    arguments without starting Python and importing MLflow four times); otherwise the installed
    ``propensity`` next to this Python runs each step (the benchmark: the seconds a user waits)."""
    import shutil
    import sys
    import time

    if work.exists():
        shutil.rmtree(work)
    (work / "models").mkdir(parents=True)
    events = write_cdnow(work / "raw", every)
    name = model_yaml.split("\n", 1)[0].split(":", 1)[1].strip()
    (work / "models" / f"{name}.yaml").write_text(model_yaml)
    project = work / "project.yaml"
    project.write_text(f"name: cdnow\nwork_dir: {work / 'work'}\nmodels_dir: {work / 'models'}\n")
    cli = [] if in_process else [str(Path(sys.executable).parent / "propensity")]
    run = _run_in_process if in_process else _run_installed
    common = ["--config", str(project), "--events"]
    steps = {
        "ingest": [
            *cli,
            "ingest",
            "--events",
            str(work / "raw"),
            "--out",
            str(work / "ingested"),
            "--config",
            str(project),
        ],
        "train": [*cli, "train", name, *common, str(work / "ingested"), "--as-of", str(as_of)],
        "promote": [*cli, "promote", name, "--config", str(project)],
        "score": [
            *cli,
            "score",
            name,
            *common,
            str(work / "ingested"),
            "--as-of",
            str(as_of),
            "--alias",
            "champion" if promote else "challenger",
            "--out",
            str(work / "scores"),
        ],
    }
    if not promote:
        del steps["promote"]
    seconds, said = {}, {}
    for step, command in steps.items():
        start = time.perf_counter()
        code, stdout, stderr = run(command, work)
        seconds[step] = round(time.perf_counter() - start, 1)
        said[step] = " ".join(stdout.split())
        if code != 0:
            raise RuntimeError(f"propensity {step} failed:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    scores = written_scores(work / "scores", name, as_of)
    figures = compare(events, scores, as_of, horizon_days, seed=seed)
    return figures | {"seconds": seconds} | ({"promotion": said["promote"]} if promote else {})


def _run_installed(command: list[str], work: Path) -> tuple[int, str, str]:
    """Run the installed CLI in ``work`` with ``work``'s MLflow store: (exit code, stdout, stderr)."""
    import os
    import subprocess

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=work)
    return done.returncode, done.stdout, done.stderr


def _run_in_process(args: list[str], work: Path) -> tuple[int, str, str]:
    """Run the CLI app in this process, in ``work`` with ``work``'s MLflow store (the working
    directory and the variable restored after): (exit code, stdout, stderr)."""
    import pytest
    from typer.testing import CliRunner

    from propensity.pipeline.cli.app import app

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
        patch.chdir(work)
        done = CliRunner().invoke(app, args, catch_exceptions=False)
    return done.exit_code, done.stdout, done.stderr
