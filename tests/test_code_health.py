"""Issue 21's hidden state, dead code and big functions, kept from coming back: the weights manager is the
engine's (no module-global registry, no private field read from outside), every label of a session is one
record, the dead names are gone and the functions the issue named stay short."""

from __future__ import annotations

import inspect

import pytest

from lib.engine import geometry, prompts, session, weights
from lib.evaluation import case_task, protocols, report
from lib.training import run


def test_the_weights_manager_is_owned_by_the_engine(engine, tmp_path):
    assert not hasattr(weights, "_MANAGERS")  # before: a module-global WeakKeyDictionary
    assert weights.manager_of(engine) is None
    manager = weights.attach(engine, str(tmp_path))
    try:
        assert engine.weights_manager is manager and weights.manager_of(engine) is manager
        assert weights.ensure_weights(engine) == weights.BASE
        assert manager.replaced_tensors() == set()  # what training reads instead of the private _base
        assert not hasattr(manager, "current_version")  # dead: set, never read
    finally:
        weights.detach(engine)
    assert weights.manager_of(engine) is None and weights.weights_in_use(engine) == weights.BASE


def test_training_reads_no_private_field_of_the_manager():
    assert "._base" not in inspect.getsource(run)


def test_a_label_of_a_session_is_one_record():
    source = inspect.getsource(session.Session)  # before: three parallel dicts (tracks, prompts, history)
    assert "self._tracks" not in source and "self._history" not in source and "self._prompts" not in source
    assert {f for f in session.LabelWork.__dataclass_fields__} == {"prompts", "history", "track"}


@pytest.mark.parametrize("owner,name", [
    (geometry, "sorted_unique"), (geometry.SliceGeometry, "of"), (protocols, "PROTOCOLS"),
    (prompts.PromptHistory, "clear"),
])
def test_dead_code_stays_gone(owner, name):
    assert not hasattr(owner, name)


@pytest.mark.parametrize("function", [run._train, case_task.evaluate_case, report.write],
                         ids=lambda f: f"{f.__module__}.{f.__name__}")
def test_the_big_functions_stay_split(function):
    lines = len(inspect.getsource(function).splitlines())
    assert lines <= 60, f"{function.__name__} is {lines} lines again (it was 83-100 before issue 21)"
