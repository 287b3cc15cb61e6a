"""A holdout declared on a destination: the same split as a segment's (one implementation), drawn
by the export among the members that destination's consents allow, hashed on
``<destination>/<segment>``, withheld from its file, recorded beside the memberships for
`measure`, and refused with its power when too small."""

from __future__ import annotations

import re

import duckdb
import pandas as pd
import pytest
from scipy import stats

from propensity.core.config import DestinationConfig, SegmentConfig
from propensity.core.errors import UserError
from propensity.features.activation import segments as seg
from propensity.features.activation.destinations import export_destination
from propensity.features.activation.holdout import destination_arms_dir
from tests.test_holdout import D1, D2, draw, people

ALL = seg.compile_segments([SegmentConfig(name="all", rule="x >= 0")], {"x": "number"}, [], "segments.yaml")


def destination(share=0.2, minimum=1, salt="", consents=()) -> DestinationConfig:
    return DestinationConfig(
        name="crm",
        identities=["email_sha256"],
        marketing_action="email",
        segments=["all"],
        include_exited=True,
        required_consents=list(consents),
        holdout=share,
        holdout_minimum=minimum,
        holdout_salt=salt,
    )


def qualify(con, features: pd.DataFrame, identities: pd.DataFrame, out, as_of, marketing=None):
    """Qualify every profile of ``features`` into segment ``all`` (no segment holdout), with
    ``marketing`` as each profile's consent_marketing (default: 'y')."""
    profiles = features[["profile_id", "consent_personalization"]].assign(
        consent_marketing=marketing if marketing is not None else "y"
    )
    con.register("feats", features)
    con.register("idmap", identities)
    con.register("profs", profiles)
    return seg.qualify(con, ALL, "SELECT * FROM feats", {}, out, as_of, ["email_sha256"], "idmap", "profs")


def recorded(out, as_of) -> pd.DataFrame:
    directory = seg.partition_dir(out, as_of) / destination_arms_dir("crm")
    return pd.read_parquet(directory / "arms.parquet").set_index("profile_id")


def test_the_destinations_arms_are_its_hash_balanced_stable_and_never_exported(tmp_path):
    con, out, exports = duckdb.connect(), tmp_path / "m", tmp_path / "exports"
    ids = [f"p{i}" for i in range(4000)]
    qualify(con, *people(ids), out, D1)
    crm = destination(0.2, salt="spring")
    first = export_destination(con, out, D1, crm, exports).segments[0]
    arms = recorded(out, D1)
    assert len(arms) == len(ids) and set(arms["segment"]) == {"all"}
    # The documented hash, with the destination in the key: not the segment's own draw.
    for profile, arm in arms["arm"].items():
        assert arm == ("holdout" if draw(profile, "crm/all", "spring") < 0.2 else "targeted")
    holdout = set(arms.index[arms["arm"] == "holdout"])
    assert holdout != {p for p in ids if draw(p, "all", "spring") < 0.2}
    # Balanced: the holdout's size is a binomial draw of 20 % (chi-square, 0.1 % risk of a false alarm).
    observed = [len(holdout), len(ids) - len(holdout)]
    assert stats.chisquare(observed, [0.2 * len(ids), 0.8 * len(ids)]).pvalue > 0.001
    # Never exported; every targeted member is.
    rows = pd.read_csv(first.path)
    assert not {f"{p}@x.org" for p in holdout} & set(rows["value"])
    assert len(rows) == first.profiles == len(ids) - len(holdout)
    assert first.withheld_destination_holdout == first.arms.holdout == len(holdout)
    assert first.withheld_holdout == 0  # the segment itself has no holdout
    # Re-running gives the same bytes, file and arms.
    arms_file = seg.partition_dir(out, D1) / destination_arms_dir("crm") / "arms.parquet"
    before = (first.path.read_bytes(), arms_file.read_bytes())
    again = export_destination(con, out, D1, crm, exports).segments[0]
    assert (again.path.read_bytes(), arms_file.read_bytes()) == before
    # The next date keeps each member's arm and the date it entered it; those who left, still
    # in the holdout, are not sent even as exited.
    qualify(con, people(ids[:2000])[0], people(ids)[1], out, D2)
    later = export_destination(con, out, D2, crm, exports).segments[0]
    now = recorded(out, D2)
    assert (now["arm"] == arms.loc[now.index, "arm"]).all()
    assert (now["arm_since"].astype(str).str[:10] == str(D1)).all()
    sent = pd.read_csv(later.path)
    assert not {f"{p}@x.org" for p in holdout} & set(sent["value"])
    assert set(sent.loc[sent["status"] == "exited", "value"]) == {
        f"{p}@x.org" for p in ids[2000:] if p not in holdout
    }


def test_consent_applies_before_the_destinations_split(tmp_path):
    con, out = duckdb.connect(), tmp_path / "m"
    ids = [f"p{i}" for i in range(3000)]
    marketing = ["y" if i % 3 else "n" for i in range(len(ids))]
    qualify(con, *people(ids), out, D1, marketing=marketing)
    exported = export_destination(
        con, out, D1, destination(0.3, consents=["consent_marketing"]), tmp_path / "exports"
    ).segments[0]
    arms = recorded(out, D1)
    allowed = {p for p, m in zip(ids, marketing, strict=True) if m == "y"}
    # Only those the destination may receive are split; the others are held back, in no arm.
    assert set(arms.index) == allowed and exported.held_back_consent == len(ids) - len(allowed)
    assert exported.arms.holdout + exported.arms.targeted == len(allowed)
    assert exported.profiles == exported.arms.targeted


def test_a_small_destination_holdout_is_refused_with_its_power_and_nothing_written(tmp_path):
    con, out, exports = duckdb.connect(), tmp_path / "m", tmp_path / "exports"
    qualify(con, *people([f"p{i}" for i in range(3000)]), out, D1)
    with pytest.raises(UserError) as error:
        export_destination(con, out, D1, destination(0.1, minimum=1000), exports)
    message = str(error.value)
    assert re.search(
        r"destination 'crm', segment 'all': a holdout of 2\d\d profiles \(10% of 3,000\) is under the "
        r"minimum of 1,000: at 80 % power and alpha 0.05 it detects only an absolute lift of [\d.]+%",
        message,
    )
    assert not (exports / "destination=crm").exists()
    assert not (seg.partition_dir(out, D1) / destination_arms_dir("crm")).exists()
