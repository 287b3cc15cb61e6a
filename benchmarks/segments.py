"""Segment qualification speed: ours against one hand-written DuckDB query.

    python benchmarks/segments.py [--profiles N] [--memory-limit 250MB]

Generates (once, in a child process, so this process's peak RSS is the qualification's) a
synthetic point-in-time feature table of N profiles (default 1M; realistic columns: counts,
recencies with NULL for "never", ratios, revenue, loyalty tier, consent) at two as-of dates,
and score partitions in the score-table contract (with factors and identity columns) for
upsell, conversion and churn at both dates. The 4 shipped segments plus 6 more are qualified
at the first date (untimed: the previous memberships), then at the second, where statuses
come from a FULL OUTER JOIN with the first:

  * ours: ``features.activation.segments.qualify`` (rules checked and compiled, one query, memberships
    written with counts per status and consent hold-backs, summary, staleness check);
  * handwritten: one DuckDB query written by hand for the same 10 rules, statuses and consent,
    COPY'd to Parquet in the same order;

both on one connection held to ``--memory-limit`` (DuckDB spills past it), best of two rounds,
alternating. The two outputs are checked equal row for row. Also timed (not in the ratio):
ours also writing the identities file exports read (every identity of every member, with
consent). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from propensity.core.config import EngineConfig, SegmentConfig
from propensity.features.activation import membership_store
from propensity.features.activation import segments as seg
from propensity.features.connection import connect

DATA = Path(__file__).parent / ".data"
D1, D2 = dt.date(2025, 6, 1), dt.date(2025, 7, 1)
MODELS = ("upsell", "conversion", "churn")
SEGMENTS = {
    # the four shipped in configs/segments.yaml
    "lapsed_yoga_buyers_likely_to_return": "upsell.score >= 70 AND category_purchase_count_365d_yoga > 0 "
    "AND days_since_last_purchase > 60",
    "high_propensity_prospects": "conversion.bucket = 'high'",
    "likely_churners": "churn.score >= 70 AND purchase_count_365d >= 1",
    "upsell_candidates": "upsell.percentile >= 80 AND is_known = 1 AND days_since_last_event <= 30",
    # six more
    "active_gold_and_silver": "loyalty_tier IN ('gold', 'silver') AND days_since_last_event <= 14",
    "cart_abandoners": "cart_abandoned_7d = 1 AND conversion.probability >= 0.1",
    "big_spenders": "revenue_sum_365d >= 500 AND average_order_value_365d > 80",
    "email_engaged": "email_open_rate_90d >= 0.3 AND email_click_count_30d > 0",
    "window_shoppers": "product_view_count_30d >= 5 AND purchase_count_90d = 0 AND is_known = 0",
    "winback_ready": "churn.probability BETWEEN 0.3 AND 0.7 AND upsell.score >= 50 "
    "AND NOT loyalty_tier = 'none'",
}


# -- synthetic data ----------------------------------------------------------------------------


def _nullable(values: np.ndarray, missing: np.ndarray) -> pa.Array:
    return pa.array(values, mask=missing)


def traits(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "activity": rng.gamma(0.6, 1.0, n),
        "buyer": rng.random(n) < 0.35,
        "known": rng.random(n) < 0.55,
        "yoga": rng.random(n) < 0.3,
        "tier": rng.choice(np.array(["none", "bronze", "silver", "gold"]), n, p=[0.55, 0.25, 0.13, 0.07]),
        "consent": rng.choice(np.array(["y", "n", ""]), n, p=[0.82, 0.08, 0.10]),
        "recency": rng.integers(0, 365, n),
    }


def feature_table(ids: np.ndarray, rng: np.random.Generator, previous: dict | None) -> tuple[pa.Table, dict]:
    """One as-of's features; with the ``previous`` date's traits, most profiles keep theirs."""
    n = len(ids)
    draw = traits(n, rng)
    if previous is not None:  # a month later: 80 % keep their traits; recency moves on or resets
        keep = rng.random(n) < 0.8
        draw = {k: np.where(keep, previous[k], v) for k, v in draw.items()}
        draw["recency"] = np.where(rng.random(n) < 0.5, previous["recency"] + 30, rng.integers(0, 30, n))
    a, buyer, known = draw["activity"], draw["buyer"], draw["known"]
    columns: dict[str, pa.Array | np.ndarray] = {"profile_id": ids}
    for w in (7, 30, 90, 365):
        scale = w / 7
        columns[f"event_count_{w}d"] = rng.poisson(a * 6 * scale).astype(np.int32)
        columns[f"page_view_count_{w}d"] = rng.poisson(a * 3 * scale).astype(np.int32)
        columns[f"product_view_count_{w}d"] = rng.poisson(a * 2 * scale).astype(np.int32)
        columns[f"purchase_count_{w}d"] = (rng.poisson(0.02 * scale, n) * buyer).astype(np.int32)
        columns[f"email_click_count_{w}d"] = rng.poisson(0.05 * scale, n).astype(np.int32)
        revenue = np.round(columns[f"purchase_count_{w}d"] * rng.gamma(2, 40, n), 2)
        columns[f"revenue_sum_{w}d"] = revenue
        orders = columns[f"purchase_count_{w}d"]
        columns[f"average_order_value_{w}d"] = _nullable(revenue / np.maximum(orders, 1), orders == 0)
        columns[f"email_open_rate_{w}d"] = _nullable(rng.beta(2, 5, n), rng.random(n) < 0.4)
        columns[f"cart_abandoned_{w}d"] = (rng.random(n) < 0.06 * a).astype(np.int32)
    columns["category_purchase_count_365d_yoga"] = (columns["purchase_count_365d"] * draw["yoga"]).astype(
        np.int32
    )
    recency = draw["recency"].astype(np.int32)
    columns["days_since_last_event"] = recency
    columns["days_since_last_purchase"] = _nullable(
        recency + rng.integers(0, 120, n).astype(np.int32), ~buyer
    )
    columns["is_known"] = known.astype(np.int32)
    for i in range(40):  # the rest of a real feature table: wide, never read by these rules
        columns[f"other_feature_{i}"] = rng.random(n)
    columns["loyalty_tier"] = _nullable(draw["tier"], ~known)
    columns["tenure_days"] = _nullable(rng.integers(0, 2000, n).astype(np.int32), ~known)
    consent = draw["consent"]
    columns["consent_personalization"] = _nullable(consent, consent == "")
    columns["consent_marketing"] = _nullable(consent, consent == "")
    return pa.table(columns), draw


def _flat(values: np.ndarray) -> pa.Array:
    array = pa.array(values)  # large string arrays come back chunked
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def score_table(
    model: str, ids: np.ndarray, as_of: dt.date, p: np.ndarray, rng: np.random.Generator
) -> pa.Table:
    """A partition in the score-table contract: scores, buckets, 5 factors, identities."""
    n = len(ids)
    score = np.clip(np.rint(100 * np.argsort(np.argsort(p)) / max(n - 1, 1)), 0, 100).astype(np.int32)
    k = 5
    factors = pa.StructArray.from_arrays(
        [
            _flat(np.tile(np.array([f"feature_{j}" for j in range(k)]), n)),
            _flat(np.tile(np.array([f"Feature {j}" for j in range(k)]), n)),
            _flat(rng.random(n * k)),
            _flat(rng.normal(0, 0.3, n * k)),
        ],
        names=["feature", "label", "value", "impact"],
    )
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    return pa.table(
        {
            "profile_id": ids,
            "model": pa.array([model] * n),
            "model_version": pa.array(["3"] * n),
            "as_of": pa.array(np.full(n, np.datetime64(as_of.isoformat(), "D"))),
            "probability": p,
            "score": score,
            "percentile": np.clip(score, 1, 100).astype(np.int32),
            "bucket": np.where(score >= 70, "high", np.where(score >= 40, "medium", "low")),
            "factors": pa.ListArray.from_arrays(offsets, factors),
            "scored_at": pa.array(np.full(n, np.datetime64(f"{as_of.isoformat()}T03:00:00", "us"))),
            "crm_id": _nullable(np.char.add("C", ids), rng.random(n) < 0.5),
        }
    )


def generate(root: Path, profiles: int) -> None:
    rng = np.random.default_rng(42)
    ids = np.array([f"p_{i:016x}" for i in rng.permutation(profiles * 8)[:profiles]])
    draw = None
    probabilities = {m: rng.beta(1.2, 6, profiles) for m in MODELS}
    for as_of in (D1, D2):
        table, draw = feature_table(ids, rng, draw)
        pq.write_table(table, root / f"features_{as_of}.parquet")
        buyer = draw["buyer"]
        for model in MODELS:
            probabilities[model] = np.clip(probabilities[model] + rng.normal(0, 0.04, profiles), 1e-4, 0.999)
            scored = buyer if model in ("upsell", "churn") else ~buyer  # each model has its population
            directory = root / "scores" / f"model={model}" / f"as_of={as_of}"
            directory.mkdir(parents=True, exist_ok=True)
            pq.write_table(
                score_table(model, ids[scored], as_of, probabilities[model][scored], rng),
                directory / "part-0.parquet",
            )
    # Identities: one ecid per profile, a crm id and an email for known ones.
    known = draw["known"]
    namespaces = np.concatenate(
        [np.full(profiles, "ecid"), np.full(known.sum(), "crm_id"), np.full(known.sum(), "email_sha256")]
    )
    values = np.concatenate(
        [np.char.add("ecid-", ids), np.char.add("C", ids[known]), np.char.add("e", ids[known])]
    )
    owners = np.concatenate([ids, ids[known], ids[known]])
    pq.write_table(
        pa.table({"namespace": namespaces, "value": values, "profile_id": owners}),
        root / "identity_map.parquet",
    )
    (root / "done").write_text("ok\n")


# -- the hand-written query -------------------------------------------------------------------


def handwritten_sql(root: Path, previous: Path, as_of: dt.date) -> str:
    """What an engineer would write by hand for these 10 rules, their statuses and consent."""
    s = {m: f"'{root}/scores/model={m}/as_of={as_of}/part-0.parquet'" for m in MODELS}
    day = f"DATE '{as_of}'"
    return f"""
        WITH base AS (
            SELECT f.*, coalesce(f.consent_personalization = 'n', false) AS opted_out,
                   u.score AS u_score, u.percentile AS u_percentile,
                   c.bucket AS c_bucket, c.probability AS c_probability,
                   ch.score AS ch_score, ch.probability AS ch_probability
            FROM read_parquet('{root}/features_{as_of}.parquet') f
            LEFT JOIN read_parquet({s["upsell"]}) u ON u.profile_id = f.profile_id
            LEFT JOIN read_parquet({s["conversion"]}) c ON c.profile_id = f.profile_id
            LEFT JOIN read_parquet({s["churn"]}) ch ON ch.profile_id = f.profile_id
        ),
        qualified AS (
            SELECT profile_id, 'lapsed_yoga_buyers_likely_to_return' AS segment, opted_out FROM base
             WHERE u_score >= 70 AND category_purchase_count_365d_yoga > 0 AND days_since_last_purchase > 60
            UNION ALL SELECT profile_id, 'high_propensity_prospects', opted_out FROM base
             WHERE c_bucket = 'high'
            UNION ALL SELECT profile_id, 'likely_churners', opted_out FROM base
             WHERE ch_score >= 70 AND purchase_count_365d >= 1
            UNION ALL SELECT profile_id, 'upsell_candidates', opted_out FROM base
             WHERE u_percentile >= 80 AND is_known = 1 AND days_since_last_event <= 30
            UNION ALL SELECT profile_id, 'active_gold_and_silver', opted_out FROM base
             WHERE loyalty_tier IN ('gold', 'silver') AND days_since_last_event <= 14
            UNION ALL SELECT profile_id, 'cart_abandoners', opted_out FROM base
             WHERE cart_abandoned_7d = 1 AND c_probability >= 0.1
            UNION ALL SELECT profile_id, 'big_spenders', opted_out FROM base
             WHERE revenue_sum_365d >= 500 AND average_order_value_365d > 80
            UNION ALL SELECT profile_id, 'email_engaged', opted_out FROM base
             WHERE email_open_rate_90d >= 0.3 AND email_click_count_30d > 0
            UNION ALL SELECT profile_id, 'window_shoppers', opted_out FROM base
             WHERE product_view_count_30d >= 5 AND purchase_count_90d = 0 AND is_known = 0
            UNION ALL SELECT profile_id, 'winback_ready', opted_out FROM base
             WHERE ch_probability BETWEEN 0.3 AND 0.7 AND u_score >= 50 AND NOT loyalty_tier = 'none'
        ),
        now AS (SELECT profile_id, segment FROM qualified WHERE NOT opted_out),
        before AS (
            SELECT profile_id, segment, qualified_at FROM read_parquet('{previous}')
            WHERE status IN ('realized', 'existing')
              AND profile_id NOT IN (SELECT profile_id FROM base WHERE opted_out)
        )
        SELECT coalesce(n.profile_id, b.profile_id) AS profile_id, coalesce(n.segment, b.segment) AS segment,
               CASE WHEN b.profile_id IS NULL THEN 'realized' WHEN n.profile_id IS NULL THEN 'exited'
                    ELSE 'existing' END AS status,
               {day} AS as_of, coalesce(b.qualified_at, {day}) AS qualified_at
        FROM now n FULL OUTER JOIN before b ON n.profile_id = b.profile_id AND n.segment = b.segment
        ORDER BY segment, profile_id
    """


# -- the run ----------------------------------------------------------------------------------


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class SpillWatch:
    """The largest size DuckDB's temp directory reached while running: did it spill?"""

    def __init__(self, directory: Path) -> None:
        self.directory, self.peak, self._stop = directory, 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            if self.directory.is_dir():
                size = sum(f.stat().st_size for f in self.directory.rglob("*") if f.is_file())
                self.peak = max(self.peak, size)

    def __enter__(self) -> SpillWatch:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--memory-limit", default="250MB", help="DuckDB memory limit (spills past it)")
    parser.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = DATA / f"segments_{args.profiles}"
    if args.generate_only:
        root.mkdir(parents=True, exist_ok=True)
        generate(root, args.profiles)
        return
    if not (root / "done").is_file():
        print(f"generating {args.profiles:,} profiles ...", flush=True)
        subprocess.run(
            [sys.executable, __file__, "--profiles", str(args.profiles), "--generate-only"], check=True
        )

    spill = DATA / "spill_segments"
    con = connect(EngineConfig(memory_limit=args.memory_limit, temp_directory=str(spill)))
    features = {d: f"SELECT * FROM read_parquet('{root}/features_{d}.parquet')" for d in (D1, D2)}
    kinds = seg.column_kinds(con, features[D2])
    definitions = [SegmentConfig(name=name, rule=rule) for name, rule in SEGMENTS.items()]
    segments = seg.compile_segments(definitions, kinds, MODELS, "benchmark")
    ours_dir, hand_dir = root / "ours", root / "handwritten"
    hand_file = hand_dir / f"as_of={D2}" / "memberships.parquet"
    hand_file.parent.mkdir(parents=True, exist_ok=True)
    # The previous as-of's memberships (untimed): both variants read the same file.
    seg.qualify(con, segments, features[D1], seg.score_files(root / "scores", segments, D1), ours_dir, D1)
    previous = seg.partition_dir(ours_dir, D1) / seg.MEMBERSHIPS_FILE
    scores = seg.score_files(root / "scores", segments, D2)

    def ours() -> None:
        seg.qualify(con, segments, features[D2], scores, ours_dir, D2)

    def handwritten() -> None:
        sql = handwritten_sql(root, previous, D2)
        con.execute(f"COPY ({sql}) TO '{hand_file}' (FORMAT parquet, COMPRESSION zstd)")

    # Warm the file cache once, then two rounds, alternating; best of two.
    con.execute(f"SELECT count(*) FROM read_parquet('{root}/features_{D2}.parquet')").fetchall()
    runs: dict[str, list[float]] = {"handwritten": [], "ours": []}
    with SpillWatch(spill) as watch:
        for _ in range(2):
            runs["handwritten"].append(timed(handwritten))
            runs["ours"].append(timed(ours))
    peak = rss_mib()
    ours_file = seg.partition_dir(ours_dir, D2) / seg.MEMBERSHIPS_FILE
    differ = con.execute(f"""
        SELECT (SELECT count(*) FROM (SELECT * FROM read_parquet('{ours_file}')
                EXCEPT ALL SELECT * FROM read_parquet('{hand_file}'))),
               (SELECT count(*) FROM (SELECT * FROM read_parquet('{hand_file}')
                EXCEPT ALL SELECT * FROM read_parquet('{ours_file}')))
    """).fetchall()[0]
    assert differ == (0, 0), f"ours and handwritten differ: {differ}"
    same_order = con.execute(f"""
        SELECT count(*) FROM (SELECT row_number() OVER () AS i, * FROM read_parquet('{ours_file}')) a
        JOIN (SELECT row_number() OVER () AS i, * FROM read_parquet('{hand_file}')) b USING (i)
        WHERE a.profile_id <> b.profile_id OR a.segment <> b.segment
    """).fetchall()[0][0]
    assert same_order == 0, "ours and handwritten are not in the same order"

    # Ours also writing the identities file exports read: not in the ratio.
    con.execute(
        f"CREATE OR REPLACE VIEW identity_map AS SELECT * FROM read_parquet('{root}/identity_map.parquet')"
    )
    con.execute(
        f"CREATE OR REPLACE VIEW profiles AS SELECT profile_id, consent_personalization, consent_marketing "
        f"FROM read_parquet('{root}/features_{D2}.parquet')"
    )
    with_identities = timed(
        lambda: seg.qualify(
            con, segments, features[D2], scores, ours_dir, D2, ["crm_id", "email_sha256", "ecid"]
        )
    )
    summary = membership_store.read_summary(ours_dir, D2)
    rows = summary["rows"]
    ours_s, hand_s = min(runs["ours"]), min(runs["handwritten"])

    print(
        f"\n{args.profiles:,} profiles x {len(segments)} segments at {D2} (previous {D1}), "
        f"{rows:,} memberships"
    )
    print(f"{'segment':<38}{'size':>10}{'realized':>10}{'existing':>10}{'exited':>10}{'held back':>11}")
    for name, c in summary["counts"].items():
        print(
            f"{name:<38}{c['size']:>10,}{c['realized']:>10,}{c['existing']:>10,}{c['exited']:>10,}{c['held_back']:>11,}"
        )
    print(f"\n{'variant (memory limit ' + args.memory_limit + ')':<44}{'seconds':>9}{'x handwritten':>15}")
    for name, seconds in (
        ("hand-written DuckDB query", hand_s),
        ("ours (features.activation.segments.qualify)", ours_s),
        ("ours + identities file for exports", with_identities),
    ):
        print(f"{name:<44}{seconds:>9.2f}{seconds / hand_s:>15.2f}")
    print(
        f"peak RSS {peak:,.0f} MiB; DuckDB spilled up to {watch.peak / 2**20:,.0f} MiB to disk; "
        f"outputs equal row for row and in the same order"
    )
    print(
        json.dumps(
            {
                "profiles": args.profiles,
                "segments": len(segments),
                "memberships": rows,
                "seconds": round(ours_s, 3),
                "handwritten_seconds": round(hand_s, 3),
                "ratio": round(ours_s / hand_s, 3),
                "with_identities_seconds": round(with_identities, 3),
                "memory_limit": args.memory_limit,
                "spilled_mib": round(watch.peak / 2**20),
                "peak_rss_mib": round(peak),
                "runs": {name: [round(x, 3) for x in xs] for name, xs in runs.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
