"""The `--condition` grammar: units, grids, lists, products, validation, embeddings."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ldns_cli.conditions.grammar import build_condition_table, parse_values
from ldns_cli.conditions.spec import (
    ConditionSpec,
    check_conditions,
    condition_spec_from_data,
    condition_values,
    detect_kind,
    embed_condition_values,
    embed_conditions,
    fit_condition_values,
)
from ldns_cli.core.errors import LdnsError

SPEC = [
    {
        "name": "angle",
        "kind": "circular",
        "dim": 1,
        "unit": "rad",
        "min": [-math.pi],
        "max": [math.pi],
    },
    {"name": "speed", "kind": "continuous", "dim": 1, "unit": "m/s", "min": [0.0], "max": [1.2]},
    {"name": "maze_id", "kind": "categorical", "values": [1, 2, 3]},
    {"name": "side", "kind": "categorical", "values": ["left", "right"]},
    {"name": "target", "kind": "continuous", "dim": 2, "unit": "m", "min": [-1, -1], "max": [1, 1]},
]
VEL = {
    "name": "hand_vel",
    "kind": "timeseries",
    "dim": 2,
    "unit": "m/s",
    "mean": [0, 0],
    "std": [2, 4],
}


def values(text: str, name: str = "angle") -> np.ndarray:
    spec = next(s for s in SPEC if s["name"] == name)
    return parse_values(text, spec)


# ---------------------------------------------------------------------------------------------
# Numbers and units
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, want",
    [
        ("0.5", 0.5),
        ("-1e-1", -0.1),
        (".25", 0.25),
        ("30deg", math.pi / 6),
        ("30°", math.pi / 6),
        ("1.5rad", 1.5),
        ("0.25pi", math.pi / 4),
        ("pi", math.pi),
    ],
)
def test_angles_in_radians_and_degrees(text, want):
    np.testing.assert_allclose(values(text), [want], rtol=1e-12)


@pytest.mark.parametrize("unit", ["deg", "degrees", "Degree", "°"])
def test_degree_spec_takes_degrees(unit):
    spec = {"name": "dir", "kind": "circular", "unit": unit}
    np.testing.assert_allclose(parse_values("90", spec), [90.0])
    np.testing.assert_allclose(parse_values("0.5pi", spec), [90.0])
    np.testing.assert_allclose(parse_values("1rad", spec), [180 / math.pi])


def test_angle_units_on_a_non_angle_condition_are_an_error():
    with pytest.raises(LdnsError, match="not an angle"):
        values("30deg", "speed")
    with pytest.raises(LdnsError, match="cannot read 'fast'"):
        values("fast", "speed")


# ---------------------------------------------------------------------------------------------
# Grids and lists
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["0:6.28:8", "0:6.2832:8", "0:360deg:8", "0deg:360deg:8", "0:2pi:8"]
)
def test_full_turn_circular_grid_has_no_duplicate_endpoint(text):
    v = values(text)
    np.testing.assert_allclose(v, 2 * math.pi * np.arange(8) / 8, atol=1e-12)
    wrapped = np.round(np.mod(v, 2 * math.pi), 9)
    assert len(np.unique(wrapped)) == 8


def test_partial_circular_and_continuous_grids_include_the_end():
    np.testing.assert_allclose(values("0:3:4"), [0, 1, 2, 3])
    np.testing.assert_allclose(values("0:1:5", "speed"), [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(values("0.3:0.9:1", "speed"), [0.3])
    # a "full turn" of a non-circular variable is just a range
    np.testing.assert_allclose(values("0:6.28:3", "speed"), [0, 3.14, 6.28])


@pytest.mark.parametrize("text", ["0:1", "0:1:0", "0:1:x", "0:1:2:3", "0deg:1rad:4"])
def test_bad_grids_are_errors(text):
    with pytest.raises(LdnsError):
        values(text, "angle")


def test_lists_and_vectors():
    np.testing.assert_allclose(values("1,2,3", "speed"), [1, 2, 3])
    np.testing.assert_allclose(values("0, 90deg", "angle"), [0, math.pi / 2])
    v = values("(0.1,0.2),(0,1)", "target")
    assert v.shape == (2, 2)
    np.testing.assert_allclose(v, [[0.1, 0.2], [0, 1]])


def test_wrong_dimensionality_is_an_error():
    with pytest.raises(LdnsError, match="2 dimensions") as exc:
        values("0.5", "target")
    assert "(0.1,0.1)" in exc.value.hint
    with pytest.raises(LdnsError, match="length"):
        values("(0.1,0.2,0.3)", "target")
    with pytest.raises(LdnsError, match="1 dimension"):
        values("(0.1,0.2)", "speed")
    with pytest.raises(LdnsError, match="parentheses"):
        values("(0.1,0.2", "target")


def test_categorical_by_value_and_label():
    assert values("3", "maze_id").tolist() == [3]
    assert values("1,3.0", "maze_id").tolist() == [1, 3]
    assert values("left,right", "side").tolist() == ["left", "right"]
    with pytest.raises(LdnsError, match="no category '7'") as exc:
        values("7", "maze_id")
    assert exc.value.hint == "categories: 1, 2, 3"
    free = {"name": "cond_id", "kind": "categorical"}  # categories not stored: integer ids
    assert parse_values("4,5", free).tolist() == [4, 5]
    with pytest.raises(LdnsError, match="integer category ids"):
        parse_values("a", free)


# ---------------------------------------------------------------------------------------------
# The per-trial table
# ---------------------------------------------------------------------------------------------


def test_cartesian_product_with_per_condition():
    table = build_condition_table(SPEC, ["angle=0:2pi:4", "speed=0.2,0.4,0.6"], per_condition=2)
    assert table.n_trials == 24 and table.n_combinations == 12
    angle, speed = table.values["angle"], table.values["speed"]
    assert angle.shape == speed.shape == (24,)
    # the first condition varies slowest, each combination is repeated K = 2 times in a row
    np.testing.assert_allclose(angle[:6], [0.0] * 6)
    np.testing.assert_allclose(speed[:6], [0.2, 0.2, 0.4, 0.4, 0.6, 0.6])
    combos = {(round(a, 6), round(s, 6)) for a, s in zip(angle, speed, strict=True)}
    assert len(combos) == 12
    for a, s in combos:
        hits = np.isclose(angle, a) & np.isclose(speed, s)
        assert hits.sum() == 2


def test_vectors_and_categories_in_the_table():
    table = build_condition_table(SPEC, ["target=(0,1),(1,0)", "side=left,right"], per_condition=3)
    assert table.values["target"].shape == (12, 2)
    assert (
        table.values["side"].tolist() == ["left"] * 3 + ["right"] * 3 + ["left"] * 3 + ["right"] * 3
    )


def test_no_conditions_is_unconditional():
    table = build_condition_table(SPEC, [], per_condition=5)
    assert table.values == {} and table.n_trials == 5


def test_time_series_from_a_recording_cross_typed_conditions():
    gen = np.random.default_rng(0)
    vel = gen.normal(size=(3, 10, 2))
    table = build_condition_table([*SPEC, VEL], ["angle=0,1"], series={"hand_vel": vel})
    assert table.n_trials == 6
    assert table.values["hand_vel"].shape == (6, 10, 2)
    np.testing.assert_array_equal(table.values["hand_vel"][3], vel[0])  # angle=1 with trace 0
    np.testing.assert_allclose(table.values["angle"], [0, 0, 0, 1, 1, 1])


def test_table_errors():
    with pytest.raises(LdnsError, match="unknown condition 'angel'") as exc:
        build_condition_table(SPEC, ["angel=0.5"])
    assert "angle (circular, rad)" in exc.value.hint and "maze_id" in exc.value.hint
    with pytest.raises(LdnsError, match="unknown condition") as exc:
        build_condition_table([], ["angle=0.5"])
    assert "without conditions" in exc.value.hint
    with pytest.raises(LdnsError, match="cannot read condition 'angle'") as exc:
        build_condition_table(SPEC, ["angle"])
    assert "NAME=VALUE" in exc.value.hint
    with pytest.raises(LdnsError, match="more than once"):
        build_condition_table(SPEC, ["angle=0", "angle=1"])
    for bad in (0, -2, 1.5, True):
        with pytest.raises(LdnsError, match="per-condition"):
            build_condition_table(SPEC, [], per_condition=bad)


def test_time_series_conditions_are_required_and_checked():
    with pytest.raises(LdnsError, match="needs the condition") as exc:
        build_condition_table([*SPEC, VEL], ["angle=0.5"])
    assert "--condition-from" in exc.value.hint
    with pytest.raises(LdnsError, match="cannot be typed"):
        build_condition_table([*SPEC, VEL], ["hand_vel=0.5"])
    with pytest.raises(LdnsError, match=r"shape \[trial, time, 2\]"):
        build_condition_table([VEL], series={"hand_vel": np.zeros((3, 10, 3))})
    with pytest.raises(LdnsError, match="not a time series"):
        build_condition_table(SPEC, series={"speed": np.zeros((3, 10, 1))})
    required_angle = {**SPEC[0], "required": True}
    with pytest.raises(LdnsError, match="needs the condition") as exc:
        build_condition_table([required_angle], [])
    assert exc.value.hint == "add --condition angle=VALUE"


def test_out_of_range_values_warn_but_do_not_fail(capsys):
    table = build_condition_table(SPEC, ["speed=0.5,2.5"])
    err = capsys.readouterr()
    assert table.n_trials == 2
    assert "warning:" in err.err and "speed" in err.err and "2.5" in err.err
    assert "0.5 " not in err.err
    assert err.out == ""
    build_condition_table(SPEC, ["speed=0:1.2:4", "angle=0:2pi:8", "target=(1,-1)"])
    assert capsys.readouterr().err == ""  # the training range's edges and any angle are fine
    build_condition_table(SPEC, ["target=(0,1.5)"])
    assert "target" in capsys.readouterr().err
    narrow = {**SPEC[0], "min": [-0.5], "max": [0.5]}
    build_condition_table([narrow], ["angle=6.2"])  # 6.2 rad ≡ -0.083 rad: inside
    assert capsys.readouterr().err == ""
    build_condition_table([narrow], ["angle=90deg"])
    assert "angle" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------


def test_embeddings():
    ang = embed_condition_values(SPEC[0], np.array([0.0, math.pi / 2]))
    assert ang.dtype == np.float32 and ang.shape == (2, 2)
    np.testing.assert_allclose(ang, [[1, 0], [0, 1]], atol=1e-7)
    deg = embed_condition_values(
        {"name": "d", "kind": "circular", "unit": "deg"}, np.array([180.0])
    )
    np.testing.assert_allclose(deg, [[-1, 0]], atol=1e-7)
    speed = embed_condition_values(SPEC[1], np.array([0.0, 0.6, 1.2]))
    np.testing.assert_allclose(speed[:, 0], [-1, 0, 1], atol=1e-7)  # the training range -> [-1, 1]
    target = embed_condition_values(SPEC[4], np.array([[1.0, -1.0]]))
    np.testing.assert_allclose(target, [[1, -1]])
    zs = embed_condition_values({**SPEC[1], "mean": [0.5], "std": [0.25]}, np.array([1.0]))
    np.testing.assert_allclose(zs, [[2.0]])
    idx = embed_condition_values(SPEC[3], np.array(["right", "left", "right"]))
    assert idx.dtype == np.int64 and idx.tolist() == [1, 0, 1]
    assert embed_condition_values(SPEC[2], np.array([3, 1])).tolist() == [2, 0]
    with pytest.raises(LdnsError, match="no category"):
        embed_condition_values(SPEC[2], np.array([9]))
    vel = embed_condition_values(VEL, np.ones((4, 7, 2)))
    assert vel.shape == (4, 7, 2)
    np.testing.assert_allclose(vel[0, 0], [0.5, 0.25])


def test_embed_conditions_on_a_table():
    table = build_condition_table(SPEC, ["angle=0,1", "maze_id=2"], per_condition=2)
    emb = embed_conditions(SPEC, table.values)
    assert set(emb) == {"angle", "maze_id"}
    assert emb["angle"].shape == (4, 2) and emb["maze_id"].tolist() == [1, 1, 1, 1]


def test_spec_validation():
    with pytest.raises(LdnsError, match="unknown kind"):
        ConditionSpec.from_dict({"name": "x", "kind": "ordinal"})
    with pytest.raises(LdnsError, match="needs 'name' and 'kind'"):
        ConditionSpec.from_dict({"name": "x"})
    s = ConditionSpec.from_dict({"name": "a", "kind": "circular"})
    assert s.unit == "rad" and not s.required
    assert ConditionSpec.from_dict(VEL).required


# ---------------------------------------------------------------------------------------------
# From a recording
# ---------------------------------------------------------------------------------------------


def recording():
    from ldns_cli.core.data import SpikeData, VariableInfo

    rng = np.random.default_rng(0)
    n, length = 6, 12
    lengths = np.array([12, 12, 10, 12, 8, 12])
    vel = rng.normal(size=(n, length, 2))
    for i, ln in enumerate(lengths):
        vel[i, ln:] = 0.0
    return SpikeData(
        counts=np.zeros((n, length, 3), dtype=np.int64),
        lengths=lengths,
        bin_size_s=0.02,
        covariates={
            "reach_angle": rng.uniform(-math.pi, math.pi, n),
            "speed": rng.uniform(0.1, 0.9, n),
            "maze_id": np.array([3, 1, 3, 2, 1, 3]),
            "target": rng.normal(size=(n, 2)),
        },
        behavior={"hand_vel": vel},
        variable_info={"hand_vel": VariableInfo(unit="m/s"), "speed": VariableInfo(unit="m/s")},
    )


ALL = np.ones(6, dtype=bool)


def test_spec_from_data_detects_kinds_and_records_ranges():
    data = recording()
    names = ["reach_angle", "speed", "maze_id", "target", "hand_vel"]
    spec = {s["name"]: s for s in condition_spec_from_data(data, names, ALL)}
    assert spec["reach_angle"]["kind"] == "circular" and spec["reach_angle"]["unit"] == "rad"
    assert set(spec["reach_angle"]) == {"name", "kind", "dim", "unit", "min", "max"}
    assert spec["speed"]["kind"] == "continuous" and spec["speed"]["unit"] == "m/s"
    assert spec["speed"]["min"] == [float(data.covariates["speed"].min())]
    assert set(spec["speed"]) == {"name", "kind", "dim", "unit", "min", "max", "mean", "std"}
    assert spec["maze_id"]["kind"] == "categorical" and spec["maze_id"]["values"] == [1, 2, 3]
    assert spec["target"]["dim"] == 2 and len(spec["target"]["max"]) == 2
    vel = spec["hand_vel"]
    assert vel["kind"] == "timeseries" and vel["dim"] == 2 and vel["required"]
    assert vel["unit"] == "m/s"
    valid = data.behavior["hand_vel"][data.mask().astype(bool)]  # padding must not count
    np.testing.assert_allclose(vel["mean"], valid.mean(axis=0))
    json.dumps(list(spec.values()))  # JSON-ready for the checkpoint metadata
    with pytest.raises(LdnsError, match="no covariate or behaviour series 'angle'") as exc:
        condition_spec_from_data(data, ["angle"], ALL)
    assert "reach_angle" in exc.value.hint and "hand_vel" in exc.value.hint


def test_spec_kind_uses_declared_kind_and_unit_first():
    from ldns_cli.core.data import VariableInfo

    data = recording()
    data.covariates["heading_deg"] = np.array([10.0, 200, 300, 45, 90, 350])  # > 2π: unit decides
    data.covariates["label"] = np.array(["a", "b", "a", "b", "a", "b"])
    data.covariates["cue"] = np.array([0.1, 0.2, 0.1, 0.3, 0.2, 0.1])  # a plain float name
    data.variable_info |= {
        "heading_deg": VariableInfo(unit="degrees"),
        "cue": VariableInfo(kind="circular"),  # declared by the reader
        "maze_id": VariableInfo(kind="continuous"),  # the default: detection still runs
    }
    names = ["heading_deg", "label", "cue", "maze_id"]
    spec = {s["name"]: s for s in condition_spec_from_data(data, names, ALL)}
    assert spec["heading_deg"]["kind"] == "circular" and spec["heading_deg"]["unit"] == "deg"
    assert spec["label"] == {
        "name": "label", "kind": "categorical", "dim": 1, "unit": "", "values": ["a", "b"]
    }  # fmt: skip
    assert spec["cue"]["kind"] == "circular" and spec["cue"]["unit"] == "rad"
    assert spec["maze_id"]["kind"] == "categorical"


def test_detect_kind():
    assert detect_kind("x", np.array([0.1, 5.0]), unit="deg") == "circular"
    assert detect_kind("x", np.array([0.1, 50.0]), unit="radians") == "circular"
    assert detect_kind("theta", np.array([0.1, 5.0])) == "circular"
    assert detect_kind("reach_angle", np.array([0.1, np.nan, -3.0])) == "circular"
    assert detect_kind("theta", np.array([0.1, 50.0])) == "continuous"  # not an angle in rad
    assert detect_kind("angle", np.array([np.nan, np.nan])) == "continuous"  # nothing to judge
    assert detect_kind("side", np.array(["l", "r"])) == "categorical"
    assert detect_kind("ok", np.array([True, False])) == "categorical"
    assert detect_kind("cond_id", np.array([1, 2])) == "categorical"
    assert detect_kind("trial-type", np.array([1, 2])) == "categorical"
    assert detect_kind("cond_id", np.array([1.0, 2.0])) == "continuous"  # floats are not labels
    assert detect_kind("n_targets", np.array([1, 2])) == "continuous"
    assert detect_kind("speed", np.array([0.1, 0.2]), unit="m/s") == "continuous"
    assert detect_kind("x", np.array([1.0]), declared="circular") == "circular"
    assert detect_kind("x", np.array([1.0]), declared="categorical") == "categorical"
    assert detect_kind("x", np.array(["a"]), declared="circular") == "categorical"
    assert detect_kind("x", np.array([1.0]), declared="continuous") == "continuous"


def test_spec_statistics_come_from_training_trials_only():
    data = recording()
    train = np.array([True, True, True, True, False, False])
    data.covariates["speed"][5] = 1e6  # a held-out trial with an extreme value
    data.covariates["reach_angle"][5] = 3.14159
    data.covariates["maze_id"][5] = 7  # a category only a held-out trial has
    data.behavior["hand_vel"][4, :8] = -1e6
    names = ["speed", "reach_angle", "maze_id", "hand_vel"]
    spec = {s["name"]: s for s in condition_spec_from_data(data, names, train)}
    speed = data.covariates["speed"][:4]
    assert spec["speed"]["min"] == [speed.min()] and spec["speed"]["max"] == [speed.max()]
    assert spec["speed"]["mean"] == [speed.mean()] and spec["speed"]["std"] == [speed.std()]
    assert spec["reach_angle"]["max"] == [data.covariates["reach_angle"][:4].max()]
    assert spec["maze_id"]["values"] == [1, 2, 3]
    valid = data.behavior["hand_vel"][:4][data.mask()[:4]]
    assert spec["hand_vel"]["min"] == valid.min(axis=0).tolist()
    assert spec["hand_vel"]["mean"] == valid.mean(axis=0).tolist()
    # a fit leaves out trials whose category it never saw (and keeps the others)
    values, usable = fit_condition_values(list(spec.values()), data)
    assert usable.tolist() == [True] * 5 + [False]
    assert embed_conditions(list(spec.values()), values)["maze_id"].shape == (6,)


def test_spec_ignores_nan_and_fails_when_all_values_are_nan():
    data = recording()
    data.covariates["speed"][[1, 3]] = np.nan
    data.covariates["target"][2, 1] = np.nan
    data.behavior["hand_vel"][0, 3, 0] = np.nan  # a valid bin
    names = ["speed", "target", "hand_vel"]
    spec = {s["name"]: s for s in condition_spec_from_data(data, names, ALL)}
    speed = data.covariates["speed"][[0, 2, 4, 5]]
    assert spec["speed"]["min"] == [speed.min()] and spec["speed"]["max"] == [speed.max()]
    np.testing.assert_allclose(spec["speed"]["mean"], [speed.mean()])
    np.testing.assert_allclose(spec["speed"]["std"], [speed.std()])
    target = data.covariates["target"]
    np.testing.assert_allclose(
        spec["target"]["mean"], [target[:, 0].mean(), np.delete(target[:, 1], 2).mean()]
    )
    assert np.all(np.isfinite(spec["hand_vel"]["mean"]))
    # a fit leaves out the trials with a NaN value (padding bins do not count)
    data.behavior["hand_vel"][4, 10, :] = np.nan  # trial 4 has 8 valid bins
    values, usable = fit_condition_values(list(spec.values()), data)
    assert usable.tolist() == [False, False, False, False, True, True]
    assert all(np.all(np.isfinite(v)) for v in values.values())
    # a condition with no value in any training trial
    data.covariates["speed"][:] = np.nan
    with pytest.raises(LdnsError, match="'speed' has no value") as exc:
        condition_spec_from_data(data, ["speed"], ALL)
    assert "training trials" in exc.value.hint
    data.covariates["speed"][4] = 0.5  # a value in a held-out trial does not help
    with pytest.raises(LdnsError, match="'speed' has no value"):
        condition_spec_from_data(data, ["speed"], np.arange(6) < 4)
    data.covariates["maze_id"] = np.full(6, np.nan)
    data.variable_info["maze_id"] = data.info("maze_id").__class__(kind="categorical")
    with pytest.raises(LdnsError, match="'maze_id' has no value"):
        condition_spec_from_data(data, ["maze_id"], ALL)


def test_check_conditions_with_values_from_a_recording():
    data = recording()
    spec = condition_spec_from_data(data, ["reach_angle", "maze_id", "hand_vel"], ALL)
    src = data.select([0, 2, 4])
    values = {s["name"]: condition_values(src, s["name"]) for s in spec}
    warnings: list[str] = []
    checked = check_conditions(spec, values, src.lengths, warn=warnings.append)
    assert not warnings
    assert checked["maze_id"].tolist() == [3, 3, 1]
    assert checked["reach_angle"].shape == (3, 1)
    np.testing.assert_array_equal(checked["hand_vel"][1], data.behavior["hand_vel"][2])
    emb = embed_conditions(spec, checked)
    assert emb["reach_angle"].shape == (3, 2) and emb["hand_vel"].shape == (3, 12, 2)
    with pytest.raises(LdnsError, match="no category 7"):
        check_conditions(spec, {**values, "maze_id": np.array([3, 7, 1])}, src.lengths)
    with pytest.raises(LdnsError, match="NaN"):
        check_conditions(spec, {**values, "reach_angle": np.array([0, np.nan, 1])}, src.lengths)
    with pytest.raises(LdnsError, match="one label per trial"):
        check_conditions(spec, {**values, "maze_id": np.array([3, 1])}, src.lengths)
    # a circular value is compared on the circle; far off the training range it warns
    narrow = [{"name": "a", "kind": "circular", "dim": 1, "min": [-0.5], "max": [0.5]}]
    check_conditions(narrow, {"a": np.array([6.2, 0.0])}, np.ones(2), warn=warnings.append)
    assert not warnings
    check_conditions(narrow, {"a": np.array([0.0, 2.0])}, np.ones(2), warn=warnings.append)
    assert len(warnings) == 1 and "a=2" in warnings[0]
    with pytest.raises(LdnsError, match="no covariate or behaviour series 'x'"):
        condition_values(src, "x")
