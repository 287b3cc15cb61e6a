"""Destination exports: only allowed identities, consent honoured twice, governance refused."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from propensity.core.config import (
    DestinationConfig,
    DestinationsFile,
    ProjectConfig,
    SegmentConfig,
    parse_config,
)
from propensity.core.errors import UserError
from propensity.features.activation import destinations as dest
from propensity.features.activation import membership_store
from propensity.features.activation import segments as seg
from propensity.pipeline.jobs import export as export_jobs
from propensity.pipeline.jobs.config_files import load_destinations, load_model_config, load_segments

D1, D2 = dt.date(2025, 3, 1), dt.date(2025, 4, 1)
NAMESPACES = ["crm_id", "email_sha256", "phone_sha256", "ecid"]
# profile -> (consent_personalization, consent_marketing, {namespace: [values]})
PEOPLE = {
    "p1": ("y", "y", {"crm_id": ["C1"], "email_sha256": ["e1"], "ecid": ["d1", "d1b"]}),
    "p2": (None, None, {"ecid": ["d2"]}),
    "p3": ("y", "n", {"email_sha256": ["e3"]}),
    "p4": ("n", "y", {"crm_id": ["C4"], "email_sha256": ["e4"]}),
}


def connection() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.register(
        "profiles",
        pd.DataFrame(
            [
                {"profile_id": p, "consent_personalization": cp, "consent_marketing": cm}
                for p, (cp, cm, _) in PEOPLE.items()
            ]
        ),
    )
    con.register(
        "identity_map",
        pd.DataFrame(
            [
                {"namespace": ns, "value": v, "profile_id": p}
                for p, (_, _, ids) in PEOPLE.items()
                for ns, values in ids.items()
                for v in values
            ]
        ),
    )
    return con


def qualify(con, out: Path, as_of: dt.date, x: dict[str, int]) -> None:
    frame = pd.DataFrame(
        [{"profile_id": p, "x": x[p], "consent_personalization": PEOPLE[p][0]} for p in PEOPLE]
    )
    con.register("feats", frame)
    kinds = {"x": "number", "consent_personalization": "string"}
    segments = seg.compile_segments(
        [SegmentConfig(name="all", rule="x > 5"), SegmentConfig(name="none", rule="x > 100")],
        kinds,
        [],
        "segments.yaml",
    )
    seg.qualify(con, segments, "SELECT * FROM feats", {}, out, as_of, identity_namespaces=NAMESPACES)


@pytest.fixture
def memberships(tmp_path) -> Path:
    out = tmp_path / "segments"
    con = connection()
    qualify(con, out, D1, {"p1": 10, "p2": 10, "p3": 10, "p4": 10})
    qualify(con, out, D2, {"p1": 10, "p2": 10, "p3": 0, "p4": 10})  # p3 exits at D2
    return out


def destination(**overrides) -> DestinationConfig:
    settings = {
        "name": "ads",
        "identities": ["email_sha256"],
        "marketing_action": "personalization",
        "segments": ["all"],
    }
    return DestinationConfig(**{**settings, **overrides})


def export(memberships: Path, out: Path, as_of: dt.date = D1, **overrides) -> dest.SegmentExport:
    result = dest.export_destination(duckdb.connect(), memberships, as_of, destination(**overrides), out)
    return result.segments[0]


def rows(path: Path) -> list[tuple]:
    frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    return [(r.namespace, r.value, r.status) for r in frame.itertuples()]


def test_a_destination_receives_only_its_namespaces_and_profiles_without_one_are_counted(
    memberships, tmp_path
):
    written = export(memberships, tmp_path / "exports")
    assert written.path == tmp_path / "exports" / "destination=ads" / "as_of=2025-03-01" / "segment=all.csv"
    assert rows(written.path) == [("email_sha256", "e1", "realized"), ("email_sha256", "e3", "realized")]
    assert (written.rows, written.profiles, written.skipped_no_identity, written.held_back_consent) == (
        2,
        2,
        1,
        0,
    )
    text = written.path.read_text()
    assert text.splitlines()[0] == "namespace,value,segment,status,qualified_at,as_of,marketing_action"
    for other in ("C1", "d1", "d2", "p1", "profile_id", "e4"):  # other namespaces, internal ids, opted out
        assert other not in text


def test_several_namespaces_give_one_row_per_identity_value(memberships, tmp_path):
    written = export(memberships, tmp_path / "exports", identities=["crm_id", "ecid"], format="parquet")
    assert rows(written.path) == [
        ("crm_id", "C1", "realized"),
        ("ecid", "d1", "realized"),
        ("ecid", "d1b", "realized"),
        ("ecid", "d2", "realized"),
    ]
    assert (written.profiles, written.skipped_no_identity) == (2, 1)  # p3 has only an email


def test_required_consent_must_be_an_explicit_yes(memberships, tmp_path):
    written = export(memberships, tmp_path / "exports", required_consents=["consent_marketing"])
    assert rows(written.path) == [("email_sha256", "e1", "realized")]
    assert written.held_back_consent == 2  # p2: not given; p3: refused


def test_opted_out_profiles_are_filtered_again_at_export(memberships, tmp_path):
    # Files produced some other way list p4, who opted out of personalisation.
    directory = seg.partition_dir(memberships, D1)
    frame = pd.read_parquet(directory / seg.MEMBERSHIPS_FILE)
    assert "p4" not in set(frame["profile_id"])
    pd.concat([frame, frame.iloc[:1].assign(profile_id="p4")], ignore_index=True).to_parquet(
        directory / seg.MEMBERSHIPS_FILE
    )
    identities = pd.read_parquet(directory / seg.IDENTITIES_FILE)
    assert list(identities.columns) == [
        "profile_id",
        "namespace",
        "value",
        "consent_personalization",
        "consent_marketing",
    ]
    p4 = identities.iloc[:1].assign(
        profile_id="p4", namespace="email_sha256", value="e4", consent_personalization="n"
    )
    pd.concat([identities, p4], ignore_index=True).to_parquet(directory / seg.IDENTITIES_FILE)
    written = export(memberships, tmp_path / "exports")
    assert "e4" not in {value for _, value, _ in rows(written.path)}
    assert written.held_back_consent == 1


def test_exited_profiles_are_exported_only_when_the_destination_asks(memberships, tmp_path):
    assert rows(export(memberships, tmp_path / "a", as_of=D2).path) == [("email_sha256", "e1", "existing")]
    assert rows(export(memberships, tmp_path / "b", as_of=D2, include_exited=True).path) == [
        ("email_sha256", "e1", "existing"),
        ("email_sha256", "e3", "exited"),
    ]


def test_exports_are_idempotent(memberships, tmp_path):
    first = export(memberships, tmp_path / "exports", identities=["crm_id", "email_sha256", "ecid"])
    before = {p.name: p.read_bytes() for p in first.path.parent.iterdir()}
    again = export(memberships, tmp_path / "exports", identities=["crm_id", "email_sha256", "ecid"])
    assert {p.name: p.read_bytes() for p in again.path.parent.iterdir()} == before
    assert set(before) == {"segment=all.csv", "manifest.json"}


def test_governance_refuses_segments_built_on_models_for_another_action():
    ads = destination(segments=["all", "scored", "orphan"], marketing_action="retention")
    refusals = dest.governance_refusals(
        ads, {"all": (), "scored": ("upsell",), "orphan": ("mystery",)}, {"upsell": "personalization"}
    )
    assert refusals == [
        "destination 'ads': segment 'scored' reads model 'upsell', governed for marketing action "
        "'personalization', not 'retention'; refused",
        "destination 'ads': segment 'orphan' reads model 'mystery', whose marketing action is unknown "
        "(no model config); refused",
    ]
    with pytest.raises(UserError, match=r"segment 'scored' reads model 'upsell'.*nothing was exported$"):
        dest.check_destinations(
            [ads], {"all": (), "scored": ("upsell",), "orphan": ()}, {}, ["email_sha256"], D1
        )


def test_unknown_segments_and_namespaces_are_named(memberships):
    with pytest.raises(UserError) as error:
        dest.check_destinations(
            [destination(segments=["all", "gone"], identities=["email_sha256", "loyalty_id"])],
            {"all": ()},
            {},
            dest.recorded_namespaces(memberships, D1, membership_store.read_summary(memberships, D1)),
            D1,
        )
    assert "segment 'gone' has no memberships at 2025-03-01 (segments: all)" in str(error.value)
    assert "identity namespace 'loyalty_id' is not one the memberships carry (crm_id, email_sha256" in str(
        error.value
    )


def test_export_job_checks_governance_with_the_model_configs_before_writing(tmp_path):
    out, con = tmp_path / "segments", connection()
    scores = tmp_path / "scores"
    directory = scores / "model=churn" / f"as_of={D1}"
    directory.mkdir(parents=True)
    pd.DataFrame({"profile_id": list(PEOPLE), "score": [90, 90, 10, 90]}).to_parquet(directory / "s.parquet")
    con.register("feats", pd.DataFrame({"profile_id": list(PEOPLE), "consent_personalization": "y"}))
    segments = seg.compile_segments(
        [SegmentConfig(name="churners", rule="churn.score >= 70")], {}, ["churn"], "segments.yaml"
    )
    seg.qualify(
        con, segments, "SELECT * FROM feats", seg.score_files(scores, segments, D1), out, D1, NAMESPACES
    )
    config = tmp_path / "destinations.yaml"
    config.write_text(
        "destinations:\n"
        "  - {name: site, identities: [ecid], marketing_action: personalization, segments: [churners]}\n"
    )
    with pytest.raises(
        UserError, match="'churn', governed for marketing action 'retention', not 'personalization'"
    ):
        export_jobs.export_segments(out, D1, config, tmp_path / "exports", ProjectConfig())
    assert not (tmp_path / "exports").exists()
    config.write_text(
        "destinations:\n"
        "  - {name: winback, identities: [crm_id], marketing_action: retention, segments: [churners]}\n"
    )
    result = export_jobs.export_segments(out, None, config, tmp_path / "exports", ProjectConfig())
    assert result.as_of == D1
    assert rows(result.destinations[0].segments[0].path) == [("crm_id", "C1", "realized")]


def test_destination_config_refuses_raw_pii_unknown_keys_and_duplicates():
    good = destination().model_dump()
    for raw in ("email", "phone"):
        with pytest.raises(
            UserError, match=rf"d\.yaml: key `destinations\.0\.identities`: .*'{raw}' is hashed"
        ):
            parse_config(DestinationsFile, {"destinations": [{**good, "identities": [raw]}]}, "d.yaml")
    with pytest.raises(UserError, match=r"key `destinations\.0\.audience`: unknown key"):
        parse_config(DestinationsFile, {"destinations": [{**good, "audience": "x"}]}, "d.yaml")
    with pytest.raises(UserError, match="destination 'ads' is listed twice"):
        parse_config(DestinationsFile, {"destinations": [good, good]}, "d.yaml")
    with pytest.raises(UserError, match=r"key `destinations\.0\.format`"):
        parse_config(DestinationsFile, {"destinations": [{**good, "format": "xlsx"}]}, "d.yaml")


def test_shipped_destinations_fit_the_shipped_segments_and_model_governance():
    destinations = load_destinations("configs/destinations.yaml").destinations
    segment_names = {s.name for s in load_segments("configs/segments.yaml").segments}
    project = ProjectConfig()
    models = {name: load_model_config(name, project) for name in ("upsell", "conversion", "churn")}
    actions = {name: m.governance.marketing_action for name, m in models.items()}
    uses = {"lapsed_yoga_buyers_likely_to_return": ("upsell",), "high_propensity_prospects": ("conversion",),
            "likely_churners": ("churn",), "upsell_candidates": ("upsell",)}  # fmt: skip
    assert set(uses) == segment_names
    for d in destinations:
        assert set(d.segments) <= segment_names
        assert dest.governance_refusals(d, uses, actions) == []
        assert not {"email", "phone"} & set(d.identities)
    by_name = {d.name: d for d in destinations}
    assert by_name["email_platform"].identities == ["crm_id"]
    assert by_name["advertising"].identities == ["email_sha256"]
    assert by_name["personalization"].identities == ["ecid"]
