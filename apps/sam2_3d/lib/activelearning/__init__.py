"""Active-learning strategies: which unlabelled image an annotator gets next."""

from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random


def strategies(app) -> dict:
    return {"random": Random(), "first": First()}
