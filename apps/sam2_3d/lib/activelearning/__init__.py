"""Active-learning strategies: which unlabelled image an annotator gets next.

* ``random`` - monailabel's own (weighted towards images not handed out recently);
* ``first``  - the first unlabelled image in id order that no *other* client was given in the last
  ``lease_s`` seconds, so two annotators asking at once do not get the same image;
* ``sam2_low_confidence`` - the unlabelled image whose last SAM 2 propagation was least stable: SAM's
  stability score of the propagated object, ``|logit > +1| / |logit > -1|`` over its slices
  (``lib/engine/confidence.py``; see ``record_confidence``); images never segmented come after, in
  ``first`` order; equal stabilities are ordered by SAM 2's mean object score. Not ranked by the object
  score first: that saturates once the model is fine-tuned (0.995 for volume
  Dice 0.03 and 0.8 alike, so the queue fell back to id order); the stability score keeps ranking.
  Scores are recorded with the weights that produced them: once a fine-tuned version is in use, scores of
  earlier weights are stale and rank after the fresh ones, so the queue follows the fine-tuned model.
  With several replicas the scores are read from the shared model store (``lib/replicas/confidences.py``),
  so each replica ranks by what every replica recorded.

Why the confidence strategy is worth having: SAM 2 is interactive, so no score exists for an image nobody
has prompted (there is nothing to "batch score" without a prompt), but every propagation yields SAM 2's
mask logits, and how many pixels sit near the threshold. An image whose propagation was unsure is one
where the annotator's corrections are most needed, so it is the one to finish first; a confident one can
wait for a quick review. This is a review queue ordered by the model's own doubt, not classic
uncertainty sampling over an unlabelled pool, and it says so.
"""

from __future__ import annotations

import logging
import time

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.tasks.activelearning.random import Random

from lib.replicas import confidences

logger = logging.getLogger(__name__)

CONFIDENCE_KEY = "sam2_confidence"
DEFAULT_LEASE_S = 600


class First(Strategy):
    def __init__(self, lease_s: int = DEFAULT_LEASE_S):
        super().__init__("First unlabelled image (in id order) not handed to another annotator recently")
        self.lease_s = lease_s

    def __call__(self, request, datastore: Datastore):
        images = sorted(datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels")))
        if not images:
            return None
        free = _not_leased(images, request, datastore, self.lease_s)
        image = (free or images)[0]
        logger.info(f"first: {image} ({len(free)} of {len(images)} unlabelled images not leased to others)")
        return {"id": image}


class LowestSam2Confidence(Strategy):
    def __init__(self, lease_s: int = DEFAULT_LEASE_S, weights_in_use=None, shared_dir: str | None = None):
        super().__init__("Unlabelled image whose last SAM 2 propagation was least confident (stability score)")
        self.lease_s = lease_s
        self.weights_in_use = weights_in_use  # () -> name of the weights the engine uses now
        self.shared_dir = shared_dir  # the model store every replica records confidences in

    def __call__(self, request, datastore: Datastore):
        ranked = self.ranked(request, datastore)
        if not ranked:
            return None
        best = ranked[0]
        info = self._record(best, datastore)
        stability = info.get("stability")
        logger.info(f"sam2_low_confidence: {best} (stability {stability})")
        return {"id": best, "sam2_stability": stability, "sam2_mean_slice_score": info.get("mean_slice_score")}

    def _record(self, image_id: str, datastore: Datastore) -> dict:
        """The image's last confidence record: its datastore info's, or with replicas the newest any replica wrote."""
        info = datastore.get_image_info(image_id).get(CONFIDENCE_KEY, {})
        if self.shared_dir:
            info = max(info, confidences.read(self.shared_dir, image_id), key=lambda r: r.get("ts", -1))
        return info

    def ranked(self, request, datastore: Datastore) -> list[str]:
        """The unlabelled images not leased to another annotator, in the order this strategy hands them out."""
        images = sorted(datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels")))
        if not images:
            return []
        pool = _not_leased(images, request, datastore, self.lease_s) or images

        current = self.weights_in_use() if self.weights_in_use else None

        def key(image_id):
            info = self._record(image_id, datastore)
            score, stability = info.get("mean_slice_score"), info.get("stability")
            if score is None:  # never segmented
                return (2, 0, 0.0, 0.0, image_id)
            stale = current is not None and info.get("weights", "base") != current
            # records made before the stability score existed come after those with one, by object score;
            # equal stabilities (random weights: no logit ever passes +1, all score 0) go by the object score
            known = stability is not None
            return (1 if stale else 0, 0 if known else 1, float(stability) if known else 0.0, float(score), image_id)

        return sorted(pool, key=key)


def _not_leased(images, request, datastore: Datastore, lease_s: int) -> list:
    client = request.get("client_id")
    strategy = request.get("strategy")
    now = time.time()
    free = []
    for image in images:
        given = datastore.get_image_info(image).get("strategy", {}).get(strategy, {})
        leased_to_other = given.get("client_id") not in (None, client) and now - given.get("ts", 0) < lease_s
        if not leased_to_other:
            free.append(image)
    return free


def record_confidence(datastore: Datastore, image_id: str, model: str, slice_scores: dict, weights: str | None = None,
                      stability: float | None = None, shared_dir: str | None = None) -> bool:
    """Keep the confidence of the image's last propagation in its datastore info (and in the shared model
    store ``shared_dir``, for every replica's active learning): the object's stability score (what the
    strategy ranks by) and, for reference, SAM 2's mean and minimum per-slice object score."""
    if not slice_scores or not image_id:
        return False
    values = [float(v) for v in slice_scores.values()]
    info = {
        "mean_slice_score": round(sum(values) / len(values), 4),
        "min_slice_score": round(min(values), 4),
        "stability": None if stability is None else round(float(stability), 4),
        "slices": len(values),
        "model": model,
        "weights": weights or "base",
        "ts": int(time.time()),
    }
    try:
        datastore.update_image_info(image_id, {CONFIDENCE_KEY: info})
    except Exception as e:  # images of a session (Slicer's local volumes) are not in the datastore
        logger.debug(f"no confidence recorded for {image_id!r}: {e}")
        return False
    if shared_dir:
        confidences.write(shared_dir, image_id, info)
    return True


def strategies(app) -> dict:
    from lib.engine import torch_thread
    from lib.engine.weights import ensure_weights, weights_in_use

    engine = app.model_config.engine

    def wanted_weights() -> str:
        # the weights the next infer request will use: a version trained since the last request counts
        # now, so the scores its predecessor recorded rank as stale at once
        torch_thread.run(ensure_weights, engine)
        return weights_in_use(engine)

    return {"random": Random(), "first": First(),
            "sam2_low_confidence": LowestSam2Confidence(weights_in_use=wanted_weights,
                                                        shared_dir=app.model_config.versions_dir)}
