"""What several replicas of the app behind one balancer share (scripts/replicas.sh, docs/deploy.md).

Everything lives in the shared model store (``--conf model_dir``), next to the fine-tuned versions:

* ``training_lock``: one replica trains at a time;
* ``confidences``: SAM 2's per-image confidence, recorded by whichever replica propagated, read by
  every replica's ``sam2_low_confidence``;
* ``sessions``: which replica last held a client's session on an image, so that a request that moved to
  another replica (its own died) is answered with ``session_restarted``.
"""
