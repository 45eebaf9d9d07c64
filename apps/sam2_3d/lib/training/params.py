"""The training parameters: defaults (shown in ``/info/``), parsing and validation.

Every bad value is collected and reported together, naming the parameter and what it accepts, so the
train endpoint can answer 422 before any process starts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from lib.common import parse_bool, parse_int
from lib.engine.intensity import PRESETS

from .data import PROMPT_KINDS
from .distributed import STRATEGIES, available_devices

TRAIN_PARTS = ("prompt_encoder", "mask_decoder", "memory")
OBJECTS = ("each", "any")
# Keys monailabel and its clients add to a train request; they are not training parameters.
CLIENT_KEYS = {"model", "local_rank", "gpus", "bundle_path", "name", "device", "multi_gpu", "dataset", "max_epochs"}
# ``POST /train/`` with a body {"<trainer>": {...}}: monailabel merges that trainer's parameters into the
# request and also passes the whole body on, so the trainer's own name arrives as a key.
TRAINER_NAME = "sam2_finetune"


class TrainParamError(ValueError):
    """One or more bad training parameters (HTTP 422)."""

    status_code = 422


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 2
    steps_per_epoch: int = 50
    learning_rate: float = 1e-5
    weight_decay: float = 0.1
    train_parts: str = "prompt_encoder,mask_decoder,memory"
    train_image_encoder: bool = False
    clip_length: int = 8
    image_size: int = 0  # 0: the size the server runs at
    prompt_types: str = "mask,click,box"
    correction_clicks: int = 7  # corrective clicks from the error on a click/box-prompted slice (SAM 2.1: 7)
    objects: str = "each"  # each label value is an object; "any": label > 0 is one object
    preset: str = "auto"
    validation_split: float = 0.2
    val_z_margin: int = 5  # validation volumes cropped to the objects' slices plus this margin; -1: whole volume
    checkpoint_every: int = 10  # steps between Lightning checkpoints (resume points)
    gradient_clip: float = 0.1  # max gradient norm, as SAM 2's training configs clip (GradientClipper, L2)
    keep_only_if_better: bool = True  # write a version only if it beats the starting weights on validation
    seed: int = 0
    resume: bool = True
    max_images: int = 0  # 0: every labelled image
    devices: int = 1  # processes (GPUs, or CPU processes on gloo) of one run; more than 1 means DDP
    strategy: str = "auto"  # "auto": one device, or DDP when devices > 1; "ddp": DDP (distributed.py)

    def parts(self) -> list[str]:
        return [p.strip() for p in self.train_parts.split(",") if p.strip()]

    def prompt_kinds(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.prompt_types.split(",") if p.strip())

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


DEFAULTS = TrainParams()


def _first(v):
    # Slicer sends back a config list's value as the list itself when the user left it unchanged
    return v[0] if isinstance(v, list) and len(v) == 1 else v


RULES = {
    "epochs": (lambda v: 1 <= v <= 10000, "an integer from 1 to 10000"),
    "steps_per_epoch": (lambda v: 1 <= v <= 1_000_000, "an integer from 1 to 1000000"),
    "learning_rate": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "weight_decay": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    # a clip of 1 slice has no tracked frame: nothing for the memory or the loss to learn from
    "clip_length": (lambda v: 2 <= v <= 64, "an integer from 2 to 64"),
    "gradient_clip": (lambda v: 0 < v <= 1000, "a number in (0, 1000]"),
    "correction_clicks": (lambda v: 0 <= v <= 20, "an integer from 0 to 20"),
    "image_size": (lambda v: v == 0 or (64 <= v <= 1024 and v % 16 == 0), "0 (the server's size) or a multiple of 16 from 64 to 1024"),
    "validation_split": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "val_z_margin": (lambda v: v >= -1, "an integer >= -1"),
    "checkpoint_every": (lambda v: v >= 1, "an integer >= 1"),
    "seed": (lambda v: 0 <= v < 2**32, "an integer from 0 to 2**32-1"),
    "max_images": (lambda v: v >= 0, "an integer >= 0"),
    "devices": (lambda v: 1 <= v <= 64, "an integer from 1 to 64"),
    "strategy": (lambda v: v in STRATEGIES, " or ".join(STRATEGIES)),
    "train_parts": (lambda v: bool(v.strip()) and all(p.strip() in TRAIN_PARTS for p in v.split(",") if p.strip()),
                    f"a comma-separated subset of {', '.join(TRAIN_PARTS)}"),
    "prompt_types": (lambda v: bool(v.strip()) and all(p.strip() in PROMPT_KINDS for p in v.split(",") if p.strip()),
                     f"a comma-separated subset of {', '.join(PROMPT_KINDS)}"),
    "objects": (lambda v: v in OBJECTS, " or ".join(OBJECTS)),
    "preset": (lambda v: v in PRESETS, f"one of {', '.join(PRESETS)}"),
}


def parse(request: dict) -> TrainParams:
    """Training parameters from a train request; raises :class:`TrainParamError` naming every bad one."""
    known = {f.name: f for f in fields(TrainParams)}
    values, errors = {}, []
    for key, raw in request.items():
        if key in CLIENT_KEYS or (key == TRAINER_NAME and isinstance(raw, dict)):
            continue
        if key not in known:
            errors.append(f"unknown parameter {key!r} (known: {', '.join(known)})")
            continue
        raw = _first(raw)
        kind = type(getattr(DEFAULTS, key))
        rule, accepts = RULES.get(key, (lambda v: True, kind.__name__))
        try:
            if kind is bool:
                value = parse_bool(raw)
            elif kind is int:
                value = parse_int(raw)
            elif kind is float:
                if isinstance(raw, bool):
                    raise ValueError
                value = float(raw)
            else:
                value = str(raw).strip()
            if not rule(value):
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            errors.append(f"{key}={raw!r}: must be {accepts if kind is not bool else 'true or false'}")
            continue
        values[key] = value
    if errors:
        raise TrainParamError("bad training parameters: " + "; ".join(errors))
    return TrainParams(**values)


def request_of_train_all(body: dict | None) -> dict:
    """What ``POST /train/`` with ``body`` hands this trainer: monailabel merges ``body[trainer]`` into the
    request and then the whole body on top (``AsyncTask.run``), so both are checked."""
    body = dict(body or {})
    own = body.get(TRAINER_NAME)
    merged = dict(own) if isinstance(own, dict) else {}
    merged.update(body)
    return merged


def check_for_server(params: TrainParams, server_image_size: int, device: str = "cpu") -> None:
    """What only the running server can tell: the network's input size is fixed when it starts; how many
    devices (GPUs, or CPUs for processes on gloo) this machine has."""
    if params.devices > 1 and params.devices > available_devices(device):
        kind = "GPUs" if str(device).startswith("cuda") else "CPUs this server may use"
        raise TrainParamError(f"devices={params.devices}: this server has {available_devices(device)} {kind} "
                              f"(the model runs on {device})")
    if params.image_size and params.image_size != server_image_size:
        raise TrainParamError(
            f"image_size={params.image_size}: this server runs SAM 2 at {server_image_size} px; train at its size "
            f"(image_size 0) or restart it with --conf image_size {params.image_size}"
        )


def config_defaults() -> dict:
    """What ``/info/`` shows under the trainer's config (clients send these back, edited)."""
    return DEFAULTS.to_dict()
