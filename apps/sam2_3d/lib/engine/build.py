"""The engine built from the server's string options (``--conf name value``), without monailabel: the
app's config, the evaluation, the benchmarks and the GPU benchmark (which runs where only torch, numpy
and pillow are installed) all build it here."""

from __future__ import annotations

import logging

import torch

from .checkpoints import CheckpointCorrupt, resolve_checkpoint
from .engine import Sam2VolumeEngine
from .model import RANDOM_WEIGHTS_WARNING, build_predictor
from .options import option

logger = logging.getLogger(__name__)


def engine_from_conf(conf: dict) -> Sam2VolumeEngine:
    """Build the engine from string options; shared by the app, the evaluation and the benchmark.

    Each value is read by its one rule in ``options.OPTIONS`` (an empty value counts as not given)."""
    given = {key: value for key, value in conf.items() if value not in (None, "")}

    def get(key: str, default):
        return option(given, key, default)

    random_weights = get("random_weights", False)
    ckpt = resolve_checkpoint(get("checkpoint", None), random_weights=random_weights, config=get("config", None),
                              verify=get("verify", False))
    device = get("device", "cuda" if torch.cuda.is_available() else "cpu")
    dtype = get("dtype", "bfloat16" if device.startswith("cuda") else None)
    image_size = get("image_size", None)
    if device.startswith("cuda") and torch.cuda.get_device_properties(torch.device(device)).major >= 8:
        # TF32 for what runs outside bf16 autocast, as SAM 2's demos and MONAI Label's built-in task set it
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if random_weights:
        # Random weights are drawn from a fixed seed so that tests, benchmarks and distributed
        # evaluation workers all build the same untrained network.
        torch.manual_seed(get("seed", 0))
    try:
        predictor = build_predictor(ckpt, device=device, image_size=image_size)
    except Exception as e:  # torch.load of a damaged file raises almost anything (IndexError, UnpicklingError ...)
        if not ckpt.path:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointCorrupt(
            f"SAM 2 checkpoint {ckpt.path} does not load as {ckpt.config}: {type(e).__name__}: {first[:300]}"
        ) from e
    name = ckpt.name + (" (RANDOM WEIGHTS)" if random_weights else "")
    logger.info(f"SAM 2 engine: {name}, config {ckpt.config}, image size {predictor.image_size}, device {device}")
    if device == "cpu" and predictor.image_size > 512:
        # the figure is SAM 2.1 tiny on a 2-core CI machine (docs/benchmark.md); cost grows with the pixel count
        logger.warning(
            f"SAM 2 runs at {predictor.image_size} px on the CPU: expect seconds per slice (SAM 2.1 tiny at 1024 px "
            f"took ~8 s per propagated slice on 2 cores). --conf image_size 512, or a MedSAM2 checkpoint (512 px), "
            f"is ~4x cheaper"
        )
    if random_weights:
        logger.warning(RANDOM_WEIGHTS_WARNING)
    engine = Sam2VolumeEngine(
        predictor,
        device=device,
        dtype=dtype,
        max_sessions=get("max_sessions", 8),
        max_session_bytes=int(get("max_session_gb", 4.0) * (1 << 30)),
        max_volumes=get("max_volumes", 4),
        session_ttl_s=get("session_ttl_hours", 24) * 3600,
        feature_cache_bytes=int(get("feature_cache_gb", 2.0) * (1 << 30)),
        feature_batch_size=get("feature_batch_size", 8 if device.startswith("cuda") else 1),
        random_weights=random_weights,
        checkpoint_name=ckpt.name,
        offload_state_above=get("offload_state_above", 256),
    )
    if get("compile", False):
        if device.startswith("cuda"):
            from .compiled import DEFAULT_MODE, compile_engine

            compile_engine(engine, get("compile_mode", DEFAULT_MODE), get("compile_cache", None))
        else:
            logger.warning(f"--conf compile true applies to CUDA only: on {device} SAM 2 runs eagerly, as without it")
    return engine
