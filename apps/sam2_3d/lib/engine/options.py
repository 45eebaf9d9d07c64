"""The server's ``--conf KEY VALUE`` options: every key the app reads, what it accepts, checked at start-up.

monailabel hands the app every ``--conf`` pair as a string and ignores what nobody reads, so a mistyped key
(``--conf imagesize 128``) used to be silently dropped and a bad value (``--conf image_size abc``) died
deep in the model build with a long traceback. ``check_conf`` names the key, the value and what is
accepted, in one line, before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..common import parse_bool, parse_int
from .errors import UnknownOption


def _int(low: int, high: int | None = None, multiple: int = 1) -> Callable[[str], int]:
    def parse(value) -> int:
        number = parse_int(str(value))
        if number < low or (high is not None and number > high) or number % multiple:
            raise ValueError(value)
        return number

    return parse


def _positive_float(value) -> float:
    number = float(str(value).strip())
    if not number > 0 or number == float("inf"):
        raise ValueError(value)
    return number


def _one_of(*choices: str) -> Callable[[str], str]:
    def parse(value) -> str:
        if str(value) not in choices:
            raise ValueError(value)
        return str(value)

    return parse


def _device(value) -> str:
    import torch

    text = str(value).strip()
    kind = text.split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise ValueError(value)
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{value}: this torch ({torch.__version__}) sees no CUDA device")
    if kind == "cuda" and ":" in text and int(text.split(":")[1]) >= torch.cuda.device_count():
        raise ValueError(f"{value}: only {torch.cuda.device_count()} CUDA device(s)")
    return text


def _text(value) -> str:
    if not str(value).strip():
        raise ValueError(value)
    return str(value)


@dataclass(frozen=True)
class Option:
    parse: Callable[[str], Any]
    accepted: str


BOOL = Option(parse_bool, "true or false")
OPTIONS: dict[str, Option] = {
    "checkpoint": Option(_text, "a registry name (python checkpoints/download_ckpts.py --list) or a .pt file"),
    "config": Option(_text, "a SAM 2 hydra config, e.g. configs/sam2.1/sam2.1_hiera_t.yaml"),
    "random_weights": BOOL,
    "verify": BOOL,
    "seed": Option(_int(0), "an integer >= 0"),
    "image_size": Option(_int(64, 4096, 32), "a multiple of 32 from 64 to 4096 (SAM 2's default 1024)"),
    "device": Option(_device, "cpu, cuda or cuda:N (CUDA only with a CUDA build of torch and a GPU)"),
    "dtype": Option(_one_of("float32", "fp32", "bfloat16", "bf16", "float16", "fp16"),
                    "float32, bfloat16 or float16"),
    "labels": Option(_text, "comma-separated label names"),
    "max_sessions": Option(_int(1), "an integer >= 1"),
    "max_session_gb": Option(_positive_float, "a number of GB > 0"),
    "max_volumes": Option(_int(1), "an integer >= 1"),
    "feature_cache_gb": Option(_positive_float, "a number of GB > 0"),
    "feature_batch_size": Option(_int(1, 256), "an integer from 1 to 256"),
    "offload_state_above": Option(_int(0), "a number of slices >= 0"),
    "compile": BOOL,
    "compile_mode": Option(_one_of("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                           "default, reduce-overhead, max-autotune or max-autotune-no-cudagraphs"),
    "compile_cache": Option(_text, "a folder"),
    "label_history": Option(_int(0), "an integer >= 0"),
    "finetuned": Option(_text, "a version name (v0003) or none"),
    "model_dir": Option(_text, "a folder"),
    # one of several replicas sharing model_dir (scripts/replicas.sh): sessions are recorded there too
    "replica": BOOL,
    "session_ttl_hours": Option(_positive_float, "a number of hours > 0 (a session unused this long ends)"),
    # bounds on what one client can make the server hold or do (docs/security.md)
    "max_volume_gb": Option(_positive_float, "a number of GB > 0 (the voxels one volume may declare)"),
    "max_clicks": Option(_int(1), "an integer >= 1 (clicks per request)"),
    "max_slices": Option(_int(1), "an integer >= 1 (slices per propagation)"),
    "max_session_disk_gb": Option(_positive_float, "a number of GB > 0 (all session uploads together)"),
    "header_timeout_s": Option(_positive_float, "a number of seconds > 0 (to send a complete request head)"),
    # monailabel's own (MONAILabelApp reads it)
    "server_mode": BOOL,
}


def option(conf: dict, key: str, default):
    """``--conf key`` read by its one rule above (what :func:`check_conf` accepts), ``default`` when absent."""
    if key not in conf:
        return default
    return check_conf({key: conf[key]})[key]


def check_conf(conf: dict) -> dict:
    """Every key known and every value accepted, or ``UnknownOption`` naming the first that is not."""
    parsed = {}
    for key, value in conf.items():
        option = OPTIONS.get(key)
        if option is None:
            raise UnknownOption(f"unknown option --conf {key} {value}; known options: {', '.join(sorted(OPTIONS))}")
        try:
            parsed[key] = option.parse(value)
        except (TypeError, ValueError) as e:
            reason = str(e) if str(e) and str(e) != str(value) else ""
            raise UnknownOption(
                f"--conf {key} {value!r} is not accepted{f' ({reason})' if reason else ''}: expected {option.accepted}"
            ) from None
    return parsed
