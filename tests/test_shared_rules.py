"""The rules written once (lib/common.py, lib/infers/infer_params.py): every reader of a yes/no, an integer,
a file extension or an infer field gives the same answer (issue 21: four boolean parsers that disagreed on
"on", three integer parsers, five extension tuples, checks written two or three times)."""

from __future__ import annotations

import json

import pytest

from lib.common import (
    LABEL_EXTENSIONS,
    LABEL_UPLOAD_EXTENSIONS,
    atomic_write_json,
    file_extension,
    parse_bool,
    parse_int,
    strip_extension,
)
from lib.engine.errors import BadRequestValue, EngineInputError, PromptError, UnknownOption
from lib.engine.options import check_conf
from lib.infers.infer_params import DEFAULT_AUTO_STOP, InferParams
from lib.training.params import TrainParamError
from lib.training.params import parse as parse_train


@pytest.mark.parametrize("text,value", [("on", True), ("Yes", True), ("1", True), (True, True), (" TRUE ", True),
                                        ("off", False), ("no", False), ("0", False), (False, False)])
def test_every_reader_of_a_yes_no_value_agrees(text, value):
    assert parse_bool(text) is value
    assert check_conf({"compile": text})["compile"] is value  # --conf
    assert parse_train({"resume": text}).resume is value  # training parameters
    # an infer request: before, "on" was false here and true for --conf and training
    assert InferParams.parse({"undo": text}, "point").undo is value


@pytest.mark.parametrize("text", ["maybe", "2", "", "tru"])
def test_a_value_that_is_neither_yes_nor_no_is_refused_everywhere(text):
    if text == "":
        assert InferParams.parse({"undo": text}, "point").undo is False  # empty: not given
        return
    with pytest.raises(ValueError):
        parse_bool(text)
    with pytest.raises(UnknownOption, match="--conf compile"):
        check_conf({"compile": text})
    with pytest.raises(TrainParamError, match="resume"):
        parse_train({"resume": text})
    with pytest.raises(BadRequestValue, match="undo must be true or false"):  # before: silently false
        InferParams.parse({"undo": text}, "point")


@pytest.mark.parametrize("value,number", [(3, 3), ("3", 3), (" 3 ", 3), (3.0, 3), ("3.0", 3), ("1e3", 1000)])
def test_every_reader_of_an_integer_agrees(value, number):
    assert parse_int(value) == number
    assert parse_train({"epochs": value}).epochs == number
    assert InferParams.parse({"auto_stop": value}, "point").auto_stop == number


@pytest.mark.parametrize("value", [2.5, "2.5", "abc", True, float("inf"), {"n": 3}, None])
def test_what_is_not_an_integer_is_refused_everywhere(value):
    with pytest.raises((TypeError, ValueError)):
        parse_int(value)
    with pytest.raises(TrainParamError, match="epochs"):  # before: inf was an OverflowError (a 500)
        parse_train({"epochs": value})
    if value is not None and value != float("inf"):  # infinity: refused as a number by check_numbers first
        with pytest.raises(BadRequestValue, match="auto_stop must be an integer"):
            InferParams.parse({"auto_stop": value}, "point")


def test_infer_params_types_and_defaults():
    p = InferParams.parse({}, "point")
    assert (p.auto_stop, p.incremental, p.undo, p.axis, p.result_extension) == (DEFAULT_AUTO_STOP, True, False, None,
                                                                                ".nii.gz")
    assert p.preset.name == "auto" and p.lock is None and p.locked_labels is None and p.exclude is None
    p = InferParams.parse({"auto_stop": "0", "incremental": "false", "labels": "ALL", "prompt_slices": 4,
                           "window_center": "40", "window_width": 400, "locked_labels": [], "axis": "j"}, "propagate")
    assert (p.auto_stop, p.incremental, p.all_labels, p.prompt_slices, p.axis) == (0, False, True, [4], "j")
    assert (p.preset.center, p.preset.width) == (40.0, 400.0)
    assert p.locked_labels == []  # an empty list unlocks every label; it is not "not given"


@pytest.mark.parametrize("request_,kind,error,text", [
    ({"auto_stop": -1}, "point", BadRequestValue, "auto_stop must be >= 0"),
    ({"window_center": 1, "window_width": 0}, "point", BadRequestValue, "window_width must be > 0"),
    ({"window_center": 1}, "point", BadRequestValue, "go together"),
    ({"preset": "nope"}, "point", UnknownOption, "unknown preset"),
    ({"axis": "x"}, "point", UnknownOption, "axis 'x' is not one of i, j, k"),
    ({"result_extension": ".png"}, "point", UnknownOption, "unsupported result_extension"),
    ({"checkpoint": 3}, "point", UnknownOption, "checkpoint must be a checkpoint name"),
    ({"lock": "yes"}, "point", PromptError, "lock must be true or false"),
    ({"exclude": "final"}, "point", PromptError, "exclude must be a list of label names"),
    ({"roi": [1, 20, 1, 20, 1, 3], "slice": 5}, "box", BadRequestValue, "box slice 5 is outside the roi's slices [1, 3]"),
    # along i, the roi's first pair bounds the slices (before, only axis k was checked before the volume was read)
    ({"roi": [2, 4, 1, 20, 1, 30], "slice": 10, "axis": "i"}, "box", BadRequestValue, "outside the roi's slices [2, 4]"),
])
def test_each_infer_rule_answers_a_4xx_naming_the_field(request_, kind, error, text):
    with pytest.raises(error, match=text.replace("[", r"\[").replace("]", r"\]")) as caught:
        InferParams.parse(request_, kind)
    assert isinstance(caught.value, EngineInputError) and 400 <= caught.value.status_code < 500


def test_file_extensions_are_one_list():
    assert file_extension("a/B.SEG.NRRD", LABEL_EXTENSIONS) == ".seg.nrrd"  # the longest, any case
    assert file_extension("a.png", LABEL_EXTENSIONS) is None
    assert strip_extension("/x/case_01.seg.nrrd", LABEL_EXTENSIONS) == "case_01"  # before: "case_01.seg" in training
    assert set(LABEL_EXTENSIONS) < set(LABEL_UPLOAD_EXTENSIONS)


def test_atomic_write_json_leaves_no_partial_file(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_json(str(path), {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(str(path), {"a": object()})  # fails half-way through writing
    assert json.loads(path.read_text()) == {"a": 1}
