"""Opt-in ``torch.compile`` of SAM 2's per-slice tracking modules (``--conf compile true``, CUDA only).

On a GPU the propagation loop is bound by Python and kernel launches (~660 launches per slice, measured),
not by the GPU. SAM 2.1 ships a compiled predictor, ``SAM2VideoPredictorVOS``: it compiles every component
with ``max-autotune`` (which had not finished after 8 minutes on an H100) and clones the outputs of each
compiled module so that CUDA graphs may reuse their buffers. We keep SAM 2's class for those clones and
compile, with a mode of our choice (default ``reduce-overhead``: CUDA graphs, no autotuning), the four
modules that run on every tracked slice:

* ``memory_encoder`` (one shape per image size) and ``memory_attention`` (``dynamic=True``: its memory
  holds 1 to 7 frames plus every conditioning frame and up to 16 object pointers);
* ``sam_prompt_encoder`` and ``sam_mask_decoder`` only on tracked slices, where the prompt is SAM 2's
  fixed padding point. A prompted slice (any number of clicks, a box, a mask) runs them eagerly, so a
  user's sixth click never waits on a recompile; those slices are few and not where the time goes.

The image encoder stays eager: it already runs in batches (``feature_batch_size``; GPU figures in docs/benchmark.md).

Compiled code is cached on disk (inductor's FX graph and AOT autograd caches, and Triton's kernels, all
under one folder), so the next start with the same model, image size and torch version skips the
compilation; :func:`compile_engine` runs it at start-up on a synthetic volume instead of on a user's request.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from sam2.sam2_video_predictor import SAM2VideoPredictorVOS

from .model import VolumePredictor, lazy_constants_as
from .sam2_adapter import become

logger = logging.getLogger(__name__)

DEFAULT_MODE = "reduce-overhead"
# (module, dynamic shapes, compiled only on tracked slices)
COMPILED_MODULES = (
    ("memory_encoder", False, False),
    ("memory_attention", True, False),
    ("sam_prompt_encoder", False, True),
    ("sam_mask_decoder", False, True),
)


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sam2-3d", "torch-compile")


class CompiledVolumePredictor(VolumePredictor, SAM2VideoPredictorVOS):
    """Our predictor (features from the volume's cache) with SAM 2's compile-friendly clones; it marks
    the calls of the SAM heads that are a tracked slice's, which alone take the compiled path."""

    _tracking_heads = False

    def _forward_sam_heads(self, backbone_features, point_inputs=None, mask_inputs=None,
                           high_res_features=None, multimask_output=False):
        self._tracking_heads = point_inputs is None and mask_inputs is None
        try:
            return super()._forward_sam_heads(backbone_features, point_inputs, mask_inputs, high_res_features,
                                              multimask_output)
        finally:
            self._tracking_heads = False


@dataclass
class CompiledTracking:
    """The engine's compile state (``engine.compiled``; None when SAM 2 runs eagerly): the warm-up figures,
    which way each gated call went, and the modules that failed and run eagerly from then on."""

    figures: dict  # mode, cache folder, warm-up seconds, inductor's cache misses and hits
    calls: Counter = field(default_factory=Counter)  # (module, "compiled" | "eager") -> calls
    failures: dict[str, str] = field(default_factory=dict)  # module -> the error that made it eager

    @property
    def mode(self) -> str:
        return self.figures["mode"]

    def status(self) -> dict:
        return {**self.figures, "eager_after_failure": dict(self.failures)}


def _use_cache_dir(cache_dir: str) -> str:
    cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
    os.makedirs(cache_dir, exist_ok=True)
    # Read by inductor when it compiles; Triton's kernels go under it too unless TRITON_CACHE_DIR says otherwise.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return cache_dir


def compile_engine(engine, mode: str = DEFAULT_MODE, cache_dir: str | None = None,
                   compiler=torch.compile) -> CompiledTracking:
    """Compile the engine's tracking modules in place (weights stay shared with eager) and compile their
    code now, on a synthetic volume, rather than on a user's first request. Sets and returns
    ``engine.compiled``. (``compiler`` is there for the tests' fault injection.)"""
    cache_dir = _use_cache_dir(cache_dir or os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir())
    predictor = engine.predictor
    # SAM 2 makes some constants lazily on its first calls (sine position encodings, RoPE tables); made
    # now, eagerly, they are not traced into a first-call variant that never runs again.
    _exercise(engine)
    lazy_constants_as(predictor, inference=True)  # the kind serving after a training run has too
    become(predictor, CompiledVolumePredictor)
    state = CompiledTracking({"mode": mode, "cache_dir": cache_dir})
    for name, dynamic, tracking_only in COMPILED_MODULES:
        module = getattr(predictor, name)
        compiled = compiler(module.forward, mode=mode, fullgraph=True, dynamic=dynamic)
        module.forward = _gated(predictor, state, name, compiled, module.forward, tracking_only)
    before = compile_counters()
    t0 = time.perf_counter()
    _exercise(engine)
    after = compile_counters()
    state.figures.update({"warm_up_s": round(time.perf_counter() - t0, 2),
                          **{k: after[k] - before[k] for k in after}})
    logger.info(f"torch.compile of SAM 2's tracking modules: {state.figures}")
    engine.compiled = state
    return state


def _gated(predictor, state: CompiledTracking, name: str, compiled, eager, tracking_only: bool):
    """Compiled for inference only: training (autograd on) runs the same module eagerly; the SAM heads
    also eagerly on prompted slices. ``state.calls`` counts which way each call went.

    If the compiled module ever fails (a compiler or CUDA-graph error), the call is made again eagerly
    (these modules are functions of their inputs) and the module stays eager from then on: compiling
    may cost speed, never a request. ``state.failures`` says which module failed and why."""
    use_compiled = [compiled]

    def forward(*args, **kwargs):
        if use_compiled[0] is not None and not torch.is_grad_enabled() and (predictor._tracking_heads or not tracking_only):
            try:
                out = use_compiled[0](*args, **kwargs)
                state.calls[name, "compiled"] += 1
                return out
            except torch.cuda.OutOfMemoryError:
                raise  # not the compiler's fault: the eager module would need the memory too
            except Exception as e:
                use_compiled[0] = None
                state.failures[name] = f"{type(e).__name__}: {str(e).strip()[:500]}"
                logger.error(f"compiled SAM 2 {name} failed; it runs eagerly from now on. "
                             f"{state.failures[name]}", exc_info=True)
        state.calls[name, "eager"] += 1
        return eager(*args, **kwargs)

    return forward


def compile_status(engine) -> dict | None:
    """What ``/info/`` shows: None without compile; else the warm-up figures and any module that fell back."""
    return None if engine.compiled is None else engine.compiled.status()


def compile_counters() -> dict:
    """Inductor's own counts of FX graphs compiled afresh and taken from the disk cache, this process."""
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    return {"fxgraph_cache_miss": int(inductor["fxgraph_cache_miss"]),
            "fxgraph_cache_hit": int(inductor["fxgraph_cache_hit"])}


def synthetic_volume(slices: int = 12, size: int = 64) -> np.ndarray:
    """A synthetic [k, j, i] volume with a bright ellipsoid: enough slices for SAM 2's full memory (7
    frames) and a growing pointer list, so that every shape a propagation meets is compiled here."""
    k, j, i = np.mgrid[:slices, :size, :size].astype(np.float32)
    c = (slices - 1) / 2, size / 2, size / 2
    inside = ((k - c[0]) / (slices / 2)) ** 2 + ((j - c[1]) / (size / 3)) ** 2 + ((i - c[2]) / (size / 4)) ** 2 <= 1
    return (inside * 200 + 20 + np.random.default_rng(0).normal(0, 5, inside.shape)).astype(np.float32)


def _exercise(engine, slices: int = 12) -> None:
    """What a user's first requests run (a click, a propagation both ways, a correction with a negative
    click, a 2D click) on a synthetic volume; the volume is forgotten after."""
    from .prompts import SlicePrompt

    vol = synthetic_volume(slices)
    mid, c = slices // 2, vol.shape[1] / 2
    session = engine.open_array("<compile warm-up>", vol, client_id="<compile warm-up>")
    session.set_prompts({mid: SlicePrompt(points=((c, c),), labels=(1,))})
    session.propagate(0, slices - 1, auto_stop=0)
    session.update_prompts(points={mid: [(c, c, 1)], mid + 2: [(c + 3, c, 1), (c - 3, c + 3, 0)]})
    session.propagate(0, slices - 1, auto_stop=0)
    session.segment_slice(mid, SlicePrompt(points=((c, c),), labels=(1,)))
    engine.clear()
