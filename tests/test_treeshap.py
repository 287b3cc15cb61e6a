"""The compiled TreeSHAP equals LightGBM's pred_contrib on every row and feature, whatever the model."""

from __future__ import annotations

import dataclasses
import json

import joblib
import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from propensity.models import treeshap, treeshap_tables
from propensity.models.calibration import Calibrator
from propensity.models.estimator import PropensityModel, arrow_lightgbm_array, lightgbm_array
from propensity.models.explain import top_factors
from propensity.models.treeshap import TreeShapExplainer

TOLERANCE = 1e-9
# Values that exercise every routing rule: NaN, zeros and what LightGBM rounds to zero, negatives
# and fractions (categorical codes truncate; negatives go right), codes past the bitsets, infinities.
SPECIAL = [
    np.nan,
    0.0,
    -0.0,
    1e-36,
    -1e-36,
    -0.5,
    -1.0,
    -3.0,
    0.5,
    2.7,
    31.0,
    32.0,
    40.0,
    1e12,
    np.inf,
    -np.inf,
]


def _train(X, y, rounds=12, categorical="auto", **params) -> lgb.Booster:
    base = {
        "objective": "binary",
        "verbosity": -1,
        "seed": 3,
        "deterministic": True,
        "num_threads": 1,
        "force_row_wise": True,
        "min_data_in_leaf": 5,
        "min_data_per_group": 5,
        "cat_smooth": 1.0,
    }
    dataset = lgb.Dataset(X, y, categorical_feature=categorical)
    return lgb.train({**base, **params}, dataset, num_boost_round=rounds)


def _data(rows: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Numeric rows with zeros and NaNs in some columns, and a label that needs interactions."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, features))
    X[:, 1] = np.where(rng.random(rows) < 0.3, 0.0, X[:, 1])
    X[rng.random(rows) < 0.2, 2] = np.nan
    signal = np.nan_to_num(X[:, 0]) * np.nan_to_num(X[:, 2], nan=1.5) + (X[:, 1] == 0) + np.sin(3 * X[:, 3])
    return X, (signal + 0.3 * rng.normal(size=rows) > 0.4).astype(float)


def _with_specials(X: np.ndarray, seed: int) -> np.ndarray:
    """A copy with a fifth of the cells replaced by the special values."""
    rng = np.random.default_rng(seed)
    out = X.copy()
    mask = rng.random(out.shape) < 0.2
    out[mask] = rng.choice(SPECIAL, size=int(mask.sum()))
    return out


def _assert_equal_to_pred_contrib(booster: lgb.Booster, X: np.ndarray, **predict) -> np.ndarray:
    """Both kernels (leaf tables where they fit, and the Linear-TreeSHAP pass) against LightGBM."""
    expected = booster.predict(X, pred_contrib=True, **predict)
    for tables in (True, False):
        explainer = TreeShapExplainer.from_booster(booster, **predict, tables=tables)
        ours = explainer.contributions(X)
        assert ours.shape == expected.shape
        assert np.abs(ours - expected).max() <= TOLERANCE
        # The raw score from the same pass is LightGBM's prediction to the last bit.
        raw, _, _ = explainer.raw_score_and_top_k(X, 1)
        assert np.array_equal(raw, booster.predict(X, raw_score=True, **predict))
    return ours


def _split_nodes(booster: lgb.Booster) -> list[dict]:
    nodes, stack = [], [t["tree_structure"] for t in booster.dump_model()["tree_info"]]
    while stack:
        node = stack.pop()
        if "split_index" in node:
            nodes.append(node)
            stack += [node["left_child"], node["right_child"]]
    return nodes


@pytest.mark.parametrize(
    "params",
    [
        {"num_leaves": 63, "max_depth": -1, "min_data_in_leaf": 3},  # deep, many leaves
        {"num_leaves": 4, "max_depth": 2},  # shallow, few leaves
        {"num_leaves": 2},  # one split a tree
        {"num_leaves": 31, "max_depth": 6, "objective": "regression"},
        {"num_leaves": 15, "zero_as_missing": True},  # missing_type Zero, both default directions
    ],
    ids=["deep", "shallow", "single-split", "regression", "zero-as-missing"],
)
def test_equals_pred_contrib_on_numeric_models_with_missing_values(params):
    X, y = _data(1500, 6, seed=1)
    booster = _train(X, y, **params)
    test, _ = _data(700, 6, seed=2)
    _assert_equal_to_pred_contrib(booster, _with_specials(test, seed=3))
    _assert_equal_to_pred_contrib(booster, test)


def test_every_missing_type_and_default_direction_is_covered():
    X, y = _data(1500, 6, seed=1)
    seen = {(n["missing_type"], n["default_left"]) for n in _split_nodes(_train(X, y, num_leaves=15))}
    seen |= {
        (n["missing_type"], n["default_left"])
        for n in _split_nodes(_train(X, y, num_leaves=15, zero_as_missing=True))
    }
    assert {"None", "Zero", "NaN"} <= {kind for kind, _ in seen}
    assert {("Zero", True), ("Zero", False), ("NaN", True), ("NaN", False)} <= seen


def test_categorical_splits_with_many_categories_and_unseen_codes():
    rng = np.random.default_rng(4)
    X, y = _data(3000, 5, seed=5)
    X[:, 4] = rng.integers(0, 45, size=len(X))  # bitsets of two 32-bit words
    X[rng.random(len(X)) < 0.1, 4] = np.nan
    y = ((np.isin(X[:, 4], [1, 3, 33, 40]) + (X[:, 0] > 0)) > 0).astype(float)
    booster = _train(X, y, categorical=[4], num_leaves=15, max_cat_to_onehot=2)
    categorical = [n for n in _split_nodes(booster) if n["decision_type"] == "=="]
    assert categorical and any(
        max(int(c) for c in str(n["threshold"]).split("||")) >= 32 for n in categorical
    )
    test, _ = _data(800, 5, seed=6)
    test[:, 4] = rng.choice([*range(50), *SPECIAL], size=len(test))
    _assert_equal_to_pred_contrib(booster, test)


def test_a_feature_split_again_on_the_same_path():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(2000, 2))
    X[rng.random(2000) < 0.1, 0] = np.nan
    y = ((np.sin(4 * np.nan_to_num(X[:, 0])) + X[:, 1] * np.nan_to_num(X[:, 0])) > 0).astype(float)
    booster = _train(X, y, num_leaves=31, max_depth=8)
    assert _has_repeated_path_feature(booster)
    _assert_equal_to_pred_contrib(booster, _with_specials(rng.normal(size=(600, 2)), seed=8))


def _has_repeated_path_feature(booster: lgb.Booster) -> bool:
    def walk(node, path) -> bool:
        if "split_index" not in node:
            return False
        if node["split_feature"] in path:
            return True
        path = path | {node["split_feature"]}
        return walk(node["left_child"], path) or walk(node["right_child"], path)

    return any(walk(t["tree_structure"], set()) for t in booster.dump_model()["tree_info"])


def test_a_stump_is_all_bias():
    X, _ = _data(300, 4, seed=9)
    booster = _train(X, np.linspace(0, 1, 300), objective="regression", min_data_in_leaf=200)
    assert booster.dump_model()["tree_info"][0]["num_leaves"] == 1
    ours = _assert_equal_to_pred_contrib(booster, X)
    assert np.all(ours[:, :-1] == 0.0)


def test_stumps_between_trees_add_their_value_to_the_bias():
    X, y = _data(1000, 4, seed=10)
    booster = _train(X, y, num_leaves=7)
    dump = booster.dump_model()
    stump = {"tree_index": 0, "num_leaves": 1, "tree_structure": {"leaf_value": 0.25, "leaf_count": 1000}}
    dump["tree_info"] = [stump, *dump["tree_info"][:3], stump, *dump["tree_info"][3:]]
    explainer = TreeShapExplainer.from_dump(dump)
    expected = booster.predict(X, pred_contrib=True)
    expected[:, -1] += 0.5
    assert np.abs(explainer.contributions(X) - expected).max() <= TOLERANCE
    raw, _, _ = explainer.raw_score_and_top_k(X, 1)  # the stumps' values are in the score too
    assert np.abs(raw - (booster.predict(X, raw_score=True) + 0.5)).max() <= 1e-12


def _negated(tree: dict) -> dict:
    """A dumped tree with every leaf value negated."""
    tree = json.loads(json.dumps(tree))
    stack = [tree["tree_structure"]]
    while stack:
        node = stack.pop()
        if "leaf_value" in node:
            node["leaf_value"] = -node["leaf_value"]
        stack += [node[c] for c in ("left_child", "right_child") if c in node]
    return tree


def test_parts_predict_each_booster_and_unexplained_trees_only_predict():
    """An ensemble of three boosters' trees (the second negated, the third deeper and not
    explained): each part's raw score is its booster's prediction to the last bit (negated), the
    SHAP values and bias are those of the first two's difference."""
    X, y = _data(1500, 6, seed=14)
    first = _train(X, y, rounds=10, num_leaves=15)
    second = _train(X, 1 - y, rounds=7, num_leaves=7)
    third = _train(X, y, rounds=5, num_leaves=63, max_depth=12)
    trees = [booster.dump_model()["tree_info"] for booster in (first, second, third)]
    dump = {**first.dump_model(), "tree_info": [*trees[0], *map(_negated, trees[1]), *trees[2]]}
    sizes = [len(t) for t in trees]
    explainer = TreeShapExplainer.from_dump(
        dump, parts=[0] * sizes[0] + [1] * sizes[1] + [2] * sizes[2], explained=[True] * 17 + [False] * 5
    )
    test = _with_specials(_data(600, 6, seed=15)[0], seed=16)
    raw, index, impact = explainer.part_scores_and_top_k(test, 6)
    assert raw.shape == (3, len(test))
    assert np.array_equal(raw[0], first.predict(test, raw_score=True))
    assert np.array_equal(-raw[1], second.predict(test, raw_score=True))
    assert np.array_equal(raw[2], third.predict(test, raw_score=True))
    expected = first.predict(test, pred_contrib=True) - second.predict(test, pred_contrib=True)
    ours = explainer.contributions(test)
    assert np.abs(ours - expected).max() <= TOLERANCE
    assert np.abs(np.take_along_axis(expected[:, :-1], index, axis=1) - impact).max() <= TOLERANCE
    # The factors with the bias add up to the explained parts' raw score.
    assert np.abs(impact.sum(axis=1) + explainer.expected_value - raw[0] - raw[1]).max() <= 1e-9
    # The deeper unexplained trees do not size the quadrature: the same points as without them.
    alone = TreeShapExplainer.from_dump({**dump, "tree_info": dump["tree_info"][:17]}, parts=[0] * 17)
    assert explainer.trees.points == alone.trees.points
    with pytest.raises(ValueError, match="one entry per tree"):
        TreeShapExplainer.from_dump(dump, parts=[0])


def test_trimmed_models_explain_only_the_trees_they_keep():
    X, y = _data(1500, 6, seed=11)
    booster = _train(X, y, rounds=30, num_leaves=15)
    test = _with_specials(_data(500, 6, seed=12)[0], seed=13)
    trimmed = lgb.Booster(model_str=booster.model_to_string(num_iteration=12))
    assert trimmed.num_trees() == 12
    _assert_equal_to_pred_contrib(trimmed, test)
    _assert_equal_to_pred_contrib(booster, test, num_iteration=12)
    full = TreeShapExplainer.from_booster(booster).contributions(test)
    assert np.abs(full - booster.predict(test, pred_contrib=True)).max() <= TOLERANCE


def test_top_k_are_the_k_largest_contributions_strongest_first():
    X, y = _data(1500, 8, seed=14)
    booster = _train(X, y, num_leaves=15)
    test = _with_specials(_data(900, 8, seed=15)[0], seed=16)
    expected = booster.predict(test, pred_contrib=True)[:, :-1]
    explainer = TreeShapExplainer.from_booster(booster)
    for k in (1, 3, 8, 20):
        index, impact = explainer.top_k(test, k)
        assert index.shape == impact.shape == (len(test), min(k, 8)) and index.dtype == np.int32
        strongest = -np.sort(-np.abs(expected), axis=1)[:, : min(k, 8)]
        assert np.abs(np.abs(impact) - strongest).max() <= TOLERANCE
        assert np.abs(impact - np.take_along_axis(expected, index.astype(np.intp), axis=1)).max() <= TOLERANCE
        assert all(len(set(row)) == len(row) for row in index.tolist())


@pytest.mark.parametrize("tables", [True, False], ids=["leaf-tables", "linear-pass"])
def test_blocks_and_row_groups_do_not_change_a_row_s_values(monkeypatch, tables):
    X, y = _data(800, 5, seed=17)
    explainer = TreeShapExplainer.from_booster(_train(X, y, num_leaves=7), tables=tables)
    whole, (index, impact) = explainer.contributions(X), explainer.top_k(X, 2)
    assert (len(explainer.tables.depth) > 0) == tables
    # Small trees: full groups.
    assert explainer.group_rows == (treeshap_tables.TABLE_GROUP_ROWS if tables else treeshap.GROUP_ROWS)
    # A row explained alone (a group of one) gets the values it gets beside 63 others.
    alone = np.vstack([explainer.contributions(X[i : i + 1]) for i in range(70)])
    assert np.array_equal(alone, whole[:70])
    # Column-major rows (what scoring converts Arrow batches to) and float32 rows read alike.
    assert np.array_equal(explainer.contributions(np.asfortranarray(X)), whole)
    assert np.array_equal(
        explainer.contributions(X.astype(np.float32)),
        explainer.contributions(X.astype(np.float32).astype(np.float64)),
    )
    monkeypatch.setattr(treeshap, "BLOCK_ROWS", 37)  # many blocks, on several threads
    monkeypatch.setattr(treeshap, "GROUP_ROWS", 8)  # several groups a block, the last one partial
    monkeypatch.setattr(treeshap_tables, "TABLE_GROUP_ROWS", 8)
    assert explainer.group_rows == 8
    assert np.array_equal(explainer.contributions(X), whole)
    chunked = explainer.top_k(X, 2)
    assert np.array_equal(chunked[0], index) and np.array_equal(chunked[1], impact)


def test_big_trees_explain_smaller_row_groups():
    X, y = _data(3000, 6, seed=21)
    booster = _train(X, y, rounds=3, num_leaves=400, min_data_in_leaf=2)
    explainer = TreeShapExplainer.from_booster(booster, tables=False)
    assert 8 <= explainer.group_rows < treeshap.GROUP_ROWS
    tabled = TreeShapExplainer.from_booster(booster)  # the patterns of a group stay in cache
    assert 8 <= tabled.group_rows < treeshap_tables.TABLE_GROUP_ROWS
    _assert_equal_to_pred_contrib(booster, _with_specials(X[:300], seed=22))


def test_leaf_tables_where_they_fit_and_the_linear_pass_elsewhere(monkeypatch):
    X, y = _data(1500, 6, seed=23)
    shallow = _train(X, y, rounds=20, num_leaves=15, max_depth=4)
    # Long paths over 6 features, most tested again and again: tables of 5- or 6-feature paths.
    deep = _train(X, y, rounds=3, num_leaves=63, max_depth=-1, min_data_in_leaf=2)
    depth = TreeShapExplainer.from_booster(shallow).tables.depth
    assert len(depth) and 1 <= depth.max() <= 4
    assert TreeShapExplainer.from_booster(deep).tables.depth.max() >= 5
    # A path testing more than TABLE_MAX_PATH features: no tables, the Linear-TreeSHAP pass.
    monkeypatch.setattr(treeshap_tables, "TABLE_MAX_PATH", 2)
    assert len(TreeShapExplainer.from_booster(shallow).tables.depth) == 0
    monkeypatch.undo()
    monkeypatch.setattr(treeshap_tables, "TABLE_MAX_VALUES", 100)  # tables over the budget
    explainer = TreeShapExplainer.from_booster(shallow)
    assert len(explainer.tables.depth) == 0 and explainer.group_rows <= treeshap.GROUP_ROWS
    test, _ = _data(400, 6, seed=24)
    _assert_equal_to_pred_contrib(shallow, _with_specials(test, seed=25))
    _assert_equal_to_pred_contrib(deep, _with_specials(test, seed=26))


def test_unsupported_models_and_inputs_are_refused():
    X, _ = _data(600, 4, seed=18)
    labels = np.arange(600) % 3
    multiclass = _train(X, labels, objective="multiclass", num_class=3, rounds=2)
    with pytest.raises(ValueError, match="one output per iteration"):
        TreeShapExplainer.from_booster(multiclass)
    explainer = TreeShapExplainer.from_booster(_train(X, (labels == 1).astype(float), rounds=2))
    with pytest.raises(ValueError, match="4 columns"):
        explainer.contributions(X[:, :3])
    with pytest.raises(ValueError, match="k must be at least 1"):
        explainer.top_k(X, 0)


@pytest.fixture(scope="module")
def small_model() -> tuple[lgb.Booster, TreeShapExplainer]:
    rng = np.random.default_rng(19)
    X, y = _data(1500, 4, seed=20)
    X[:, 3] = rng.integers(0, 40, size=len(X))
    booster = _train(X, y, categorical=[3], num_leaves=15, max_cat_to_onehot=2)
    return booster, TreeShapExplainer.from_booster(booster)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 20), st.just(4)),
        elements=st.one_of(st.sampled_from(SPECIAL), st.floats(-5, 45, allow_nan=False)),
    )
)
def test_any_rows_get_pred_contrib_values_and_add_up_to_the_raw_score(small_model, rows):
    booster, explainer = small_model
    ours = explainer.contributions(rows)
    assert np.abs(ours - booster.predict(rows, pred_contrib=True)).max() <= TOLERANCE
    assert np.abs(ours.sum(axis=1) - booster.predict(rows, raw_score=True)).max() <= 1e-9
    raw, _, _ = explainer.raw_score_and_top_k(rows, 2)
    assert np.array_equal(raw, booster.predict(rows, raw_score=True))


def _frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "orders_90d": rng.poisson(2.0, rows).astype(float),
            "days_since_last_event": rng.exponential(20.0, rows),
            "revenue_30d": np.where(rng.random(rows) < 0.2, np.nan, rng.gamma(2.0, 30.0, rows)),
            "loyalty_tier": rng.choice(["bronze", "gold", "silver", None], rows, p=[0.4, 0.2, 0.3, 0.1]),
        }
    )
    frame["label"] = (
        (frame["orders_90d"] > 2) ^ (frame["loyalty_tier"] == "gold") | (frame["days_since_last_event"] < 5)
    ).astype(float)
    return frame


@pytest.fixture(scope="module")
def propensity_model() -> PropensityModel:
    features = ["orders_90d", "days_since_last_event", "revenue_30d", "loyalty_tier"]
    model = PropensityModel(
        name="test",
        feature_names=features,
        feature_labels={"orders_90d": "Orders (90 days)", "loyalty_tier": "Loyalty tier"},
        categories={"loyalty_tier": ["bronze", "gold", "silver"]},
        booster_text="",
        calibrator=Calibrator("sigmoid"),
    )
    train = _frame(2000, seed=21)
    booster = _train(model.matrix(train), train["label"].to_numpy(), rounds=20, num_leaves=7)
    model.booster_text = booster.model_to_string()
    return model


def test_model_contributions_equal_pred_contrib_on_a_frame_with_a_categorical(propensity_model, tmp_path):
    frame = _frame(500, seed=22)
    frame.loc[:9, "loyalty_tier"] = "platinum"  # unknown to the model: missing, as LightGBM sees it
    expected = propensity_model.booster.predict(propensity_model.matrix(frame), pred_contrib=True)
    assert np.abs(propensity_model.contributions(frame) - expected).max() <= TOLERANCE
    codes = propensity_model.lightgbm_array(frame)[:, 3]
    assert np.isnan(codes[:10]).all() and set(np.unique(codes[10:][~np.isnan(codes[10:])])) <= {0.0, 1.0, 2.0}
    saved = PropensityModel.load(propensity_model.save(tmp_path / "model.joblib"))
    assert saved._explainer is None
    assert np.abs(saved.contributions(frame) - expected).max() <= TOLERANCE


def test_top_factors_are_pred_contribs_strongest_with_their_values(propensity_model):
    frame = _frame(300, seed=23)
    factors = top_factors(propensity_model, frame, k=3)
    contributions = propensity_model.booster.predict(propensity_model.matrix(frame), pred_contrib=True)[
        :, :-1
    ]
    names = propensity_model.feature_names
    assert len(factors) == len(frame)
    for i, row in enumerate(factors):
        order = np.argsort(-np.abs(contributions[i]), kind="stable")[:3]
        expected = [j for j in order if contributions[i, j] != 0.0]
        assert [f["feature"] for f in row] == [names[j] for j in expected]
        for factor, j in zip(row, expected, strict=True):
            assert factor["impact"] == pytest.approx(contributions[i, j], abs=TOLERANCE)
            assert factor["label"] == propensity_model.feature_labels.get(names[j], names[j])
            raw = frame[names[j]].iloc[i]
            assert factor["value"] == (
                None if pd.isna(raw) else raw if names[j] == "loyalty_tier" else float(raw)
            )
    json.dumps(factors)  # plain Python values only


def test_lightgbm_array_maps_categories_as_the_booster_does(propensity_model):
    frame = _frame(50, seed=24)
    matrix = propensity_model.matrix(frame)
    reordered = matrix.assign(
        loyalty_tier=matrix["loyalty_tier"].cat.reorder_categories(["silver", "gold", "bronze"])
    )
    trained = propensity_model.booster.pandas_categorical
    assert np.array_equal(lightgbm_array(reordered, trained), lightgbm_array(matrix), equal_nan=True)
    joblib.dump(propensity_model, "/dev/null")  # picklable with a built explainer


def test_arrow_batches_predict_and_explain_as_the_dataframe_path(propensity_model):
    """Batch scoring reads DuckDB's Arrow batches without pandas: integer and null numbers,
    unknown and missing categories give the probabilities and factors of the DataFrame path."""
    frame = _frame(400, seed=25).drop(columns="label")
    frame.loc[:9, "loyalty_tier"] = "platinum"
    frame["orders_90d"] = frame["orders_90d"].astype("Int64")
    frame.loc[10:19, "orders_90d"] = pd.NA
    table = pa.Table.from_pandas(frame, preserve_index=False)
    assert table.schema.field("orders_90d").type == pa.int64()
    expected_rows = propensity_model.lightgbm_array(frame)
    assert np.array_equal(
        arrow_lightgbm_array(table, propensity_model.feature_names, propensity_model._categorical_lists()),
        expected_rows,
        equal_nan=True,
    )
    train = _frame(500, seed=26)
    model = dataclasses.replace(
        propensity_model,
        calibrator=Calibrator("sigmoid").fit(propensity_model.raw_score(train), train["label"].to_numpy()),
    )
    probability, indices, impacts = model.predict_and_explain(table, 3)
    assert np.array_equal(probability, model.predict_proba(frame))
    want_indices, want_impacts = propensity_model.top_contributions(propensity_model.matrix(frame), 3)
    assert np.array_equal(indices, want_indices) and np.array_equal(impacts, want_impacts)
    # Columns of nulls only (what scoring selects for features no tree splits on), typed or of
    # Arrow's null type, numeric or categorical: NaN, as on the DataFrame path.
    empty = frame.assign(revenue_30d=np.nan, loyalty_tier=None)
    for nulls in (
        pa.Table.from_pandas(empty, preserve_index=False),
        table.set_column(2, "revenue_30d", pa.nulls(len(frame))).set_column(
            3, "loyalty_tier", pa.nulls(len(frame), pa.string())
        ),
    ):
        assert nulls.column("revenue_30d").null_count == len(frame)
        assert np.array_equal(
            arrow_lightgbm_array(
                nulls, propensity_model.feature_names, propensity_model._categorical_lists()
            ),
            propensity_model.lightgbm_array(empty),
            equal_nan=True,
        )


def test_the_model_module_does_not_load_numba_for_scoring():
    import subprocess
    import sys

    code = "import sys, propensity.models.estimator; assert 'numba' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
