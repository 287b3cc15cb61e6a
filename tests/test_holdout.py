"""Holdout groups: deterministic, balanced, stable across dates and merges, never exported,
refused when too small to show a lift."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import tempfile
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from propensity.core.config import DestinationConfig, SegmentConfig
from propensity.core.errors import UserError
from propensity.core.power import minimum_detectable_lift
from propensity.features.activation import membership_store
from propensity.features.activation import segments as seg
from propensity.features.activation.destinations import export_destination

D1, D2, D3 = dt.date(2025, 3, 1), dt.date(2025, 4, 1), dt.date(2025, 5, 1)


def holdout_segment(share=0.1, minimum=1, salt="", name="all", rule="x >= 0") -> seg.Segment:
    config = SegmentConfig(name=name, rule=rule, holdout=share, holdout_minimum=minimum, holdout_salt=salt)
    return seg.compile_segments([config], {"x": "number"}, [], "segments.yaml")[0]


def run(con, segments, features: pd.DataFrame, identities: pd.DataFrame, out: Path, as_of: dt.date):
    """Qualify ``features`` (profile_id, x, consent_personalization) with ``identities``
    (profile_id, namespace, value) as the identity graph at ``as_of``."""
    con.register("feats", features)
    con.register("idmap", identities)
    con.register("profs", features[["profile_id", "consent_personalization"]])
    return seg.qualify(
        con, segments, "SELECT * FROM feats", {}, out, as_of, ["email_sha256"], "idmap", "profs"
    )


def people(ids, x=None, consent=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    ids = list(ids)
    features = pd.DataFrame(
        {
            "profile_id": pd.Series(ids, dtype="string"),
            "x": pd.Series(np.arange(len(ids)) % 10 if x is None else x, dtype="float64"),
            "consent_personalization": pd.Series(consent or ["y"] * len(ids), dtype="string"),
        }
    )
    identities = pd.DataFrame(
        {"profile_id": ids, "namespace": "email_sha256", "value": [f"{p}@x.org" for p in ids]}
    )
    return features, identities


def members(out: Path, as_of: dt.date) -> pd.DataFrame:
    return pd.read_parquet(seg.partition_dir(out, as_of) / seg.MEMBERSHIPS_FILE).set_index("profile_id")


def draw(profile: str, segment: str, salt: str = "") -> float:
    """The documented hash draw, computed independently of the SQL."""
    return int(hashlib.md5(f"{profile}|{segment}|{salt}".encode()).hexdigest()[:8], 16) / 2**32


def test_arms_are_the_documented_hash_balanced_and_identical_on_re_runs(tmp_path):
    con, out = duckdb.connect(), tmp_path / "m"
    ids = [f"prof-{i:05d}" for i in range(20_000)]
    result = run(con, [holdout_segment(0.1)], *people(ids), out, D1)
    first = members(out, D1)
    expected = pd.Series([("holdout" if draw(p, "all") < 0.1 else "targeted") for p in ids], index=ids)
    assert (first["arm"] == expected.reindex(first.index)).all()
    assert (first["arm_since"].astype(str).str[:10] == str(D1)).all()
    # Balanced: the holdout's size, and its spread over the x deciles, pass chi-square at 0.1 %.
    holdout = int((first["arm"] == "holdout").sum())
    chi2 = (holdout - 2000) ** 2 / 2000 + (holdout - 2000) ** 2 / 18_000
    assert chi2 < stats.chi2.ppf(0.999, 1)
    table = pd.crosstab(first["arm"], np.arange(len(ids))[np.searchsorted(ids, first.index)] % 10)
    assert stats.chi2_contingency(table).pvalue > 0.001
    counts = result.arms[0]
    assert (counts.holdout, counts.targeted) == (holdout, 20_000 - holdout)
    # Re-running the date writes the same bytes; another salt is another draw.
    before = (seg.partition_dir(out, D1) / seg.MEMBERSHIPS_FILE).read_bytes()
    run(con, [holdout_segment(0.1)], *people(ids), out, D1)
    assert (seg.partition_dir(out, D1) / seg.MEMBERSHIPS_FILE).read_bytes() == before
    run(con, [holdout_segment(0.1, salt="spring")], *people(ids), tmp_path / "salted", D1)
    salted = members(tmp_path / "salted", D1)["arm"]
    both = int(((salted == "holdout") & (first["arm"] == "holdout")).sum())
    assert both < 2 * 0.1 * 0.1 * 20_000  # about independent: ~200 expected, not ~2,000


def test_a_member_keeps_its_arm_and_date_across_dates_and_exits(tmp_path):
    con, out = duckdb.connect(), tmp_path / "m"
    ids = [f"p{i}" for i in range(400)]
    run(con, [holdout_segment(0.5)], *people(ids), out, D1)
    first = members(out, D1)
    # Another share later cannot move anyone already assigned; newcomers are drawn.
    later_ids = ids[:300] + [f"q{i}" for i in range(100)]
    run(con, [holdout_segment(0.2)], *people(later_ids), out, D2)
    second = members(out, D2)
    stayed = second.loc[ids[:300]]
    assert (stayed["arm"] == first.loc[ids[:300], "arm"]).all()
    assert (stayed["arm_since"].astype(str).str[:10] == str(D1)).all()
    exited = second[second["status"] == "exited"]
    assert set(exited.index) == set(ids[300:]) and (exited["arm"] == first.loc[exited.index, "arm"]).all()
    new = second.loc[[f"q{i}" for i in range(100)]]
    assert (new["arm"] == ["holdout" if draw(p, "all") < 0.2 else "targeted" for p in new.index]).all()


def test_consent_applies_before_the_split(tmp_path):
    con, out = duckdb.connect(), tmp_path / "m"
    ids = [f"p{i}" for i in range(200)]
    consent = ["n" if i % 4 == 0 else "y" for i in range(200)]
    result = run(con, [holdout_segment(0.5)], *people(ids, consent=consent), out, D1)
    written = members(out, D1)
    assert len(written) == 150 and written["arm"].notna().all()
    assert result.arms[0].holdout + result.arms[0].targeted == 150


def _pair_in_different_arms() -> tuple[str, str]:
    """Two profile ids the hash puts in different arms at share 0.5 (holdout first)."""
    ids = [f"m{i}" for i in range(50)]
    holdout = next(p for p in ids if draw(p, "all") < 0.5)
    targeted = next(p for p in ids if draw(p, "all") >= 0.5)
    return holdout, targeted


def test_merged_profiles_take_the_earliest_assignment_and_count_as_contamination(tmp_path):
    con, out = duckdb.connect(), tmp_path / "m"
    held, sent = _pair_in_different_arms()
    others = [f"o{i}" for i in range(20)]
    run(con, [holdout_segment(0.5)], *people([sent, *others]), out, D1)  # `sent` enters first: targeted
    run(con, [holdout_segment(0.5)], *people([held, sent, *others]), out, D2)  # `held` enters: holdout
    # D3: both merge into a new profile that holds both e-mails.
    features, identities = people(["merged", *others])
    identities = pd.concat(
        [identities, pd.DataFrame({"profile_id": ["merged"] * 2, "namespace": "email_sha256",
                                   "value": [f"{held}@x.org", f"{sent}@x.org"]})]
    )  # fmt: skip
    result = run(con, [holdout_segment(0.5)], features, identities, out, D3)
    merged = members(out, D3).loc["merged"]
    assert (merged["arm"], str(merged["arm_since"])[:10]) == ("targeted", str(D1))  # the earliest wins
    assert result.arms[0].merged_across_arms == 1
    # Same date: the holdout wins (never export someone who was withheld).
    out2 = tmp_path / "m2"
    run(con, [holdout_segment(0.5)], *people([held, sent]), out2, D1)
    run(
        con,
        [holdout_segment(0.5)],
        features.iloc[:1],
        identities[identities["profile_id"] == "merged"],
        out2,
        D2,
    )
    assert members(out2, D2).loc["merged", "arm"] == "holdout"


def test_identities_shared_across_arms_are_counted(tmp_path):
    con, out = duckdb.connect(), tmp_path / "m"
    held, sent = _pair_in_different_arms()
    features, identities = people([held, sent])
    household = pd.DataFrame({"profile_id": [held, sent], "namespace": "email_sha256", "value": "home@x.org"})
    result = run(con, [holdout_segment(0.5)], features, pd.concat([identities, household]), out, D1)
    assert result.arms[0].shared_identities == 1
    summary = membership_store.read_summary(out, D1)
    assert summary["holdout"]["all"]["shared_identities"] == 1


def test_a_small_holdout_is_refused_with_its_power(tmp_path):
    con, out = duckdb.connect(), tmp_path / "m"
    ids = [f"p{i}" for i in range(3000)]
    with pytest.raises(UserError) as error:
        run(con, [holdout_segment(0.1, minimum=1000)], *people(ids), out, D1)
    message = str(error.value)
    assert re.search(
        r"segment 'all': a holdout of 2\d\d profiles \(10% of 3,000\) is under the minimum of 1,000", message
    )
    mde = re.search(r"detects only an absolute lift of ([\d.]+)% on a 5.0% baseline", message)
    holdout = int(re.search(r"a holdout of (\d+)", message).group(1))
    assert float(mde.group(1)) / 100 == pytest.approx(
        minimum_detectable_lift(0.05, 3000 - holdout, holdout), abs=1e-4
    )
    assert not seg.partition_dir(out, D1).exists()  # nothing half-written


def test_holdout_members_are_never_exported(tmp_path):
    con, out = duckdb.connect(), tmp_path / "m"
    ids = [f"p{i}" for i in range(500)]
    run(con, [holdout_segment(0.3)], *people(ids), out, D1)
    # Half no longer qualify at D2 (their identities are still in the graph): they exit.
    run(con, [holdout_segment(0.3)], people(ids[:250])[0], people(ids)[1], out, D2)
    destination = DestinationConfig(
        name="crm",
        identities=["email_sha256"],
        marketing_action="email",
        segments=["all"],
        include_exited=True,
    )
    arms = members(out, D1)["arm"]
    withheld = set(arms.index[arms == "holdout"])
    for as_of in (D1, D2):
        exported = export_destination(con, out, as_of, destination, tmp_path / "exports").segments[0]
        rows = pd.read_csv(exported.path)
        assert not {f"{p}@x.org" for p in withheld} & set(rows["value"])
        current = members(out, as_of).query("status != 'exited'")
        assert exported.withheld_holdout == int((current["arm"] == "holdout").sum()) > 0
        assert int((rows["status"] != "exited").sum()) == int((current["arm"] == "targeted").sum())
    # At D2 the targeted members who left are sent as exited; the holdout's never are.
    assert set(rows.loc[rows["status"] == "exited", "value"]) == {
        f"{p}@x.org" for p in ids[250:] if p not in withheld
    }


@settings(max_examples=15, deadline=None)
@given(st.lists(st.sets(st.integers(0, 59), min_size=20), min_size=2, max_size=3))
def test_arms_follow_the_hash_and_never_move_on_any_history(days):
    with tempfile.TemporaryDirectory() as tmp:
        con, out = duckdb.connect(), Path(tmp) / "m"
        dates = [D1, D2, D3][: len(days)]
        for as_of, present in zip(dates, days, strict=True):
            run(con, [holdout_segment(0.5)], *people(sorted(f"p{i}" for i in present)), out, as_of)
        seen: dict[str, str] = {}
        for as_of in dates:
            frame = members(out, as_of)
            for profile, arm in frame["arm"].items():
                assert arm == ("holdout" if draw(profile, "all") < 0.5 else "targeted")
                assert seen.setdefault(profile, arm) == arm
