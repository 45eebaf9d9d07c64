"""Registry of the public SAM 2 / SAM 2.1 checkpoints and MedSAM2's: name -> config, file, checksum, URL.

``checkpoints/download_ckpts.py`` downloads these files into ``checkpoints/``; the server resolves
``--conf checkpoint <name|path.pt>`` here and fails at start-up with the missing file and the
command that fetches it, instead of downloading anything itself.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from .errors import UnknownOption

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
CHECKPOINT_DIR = os.environ.get("SAM2_3D_CHECKPOINT_DIR", os.path.join(REPO_ROOT, "checkpoints"))
DOWNLOAD_COMMAND = "python checkpoints/download_ckpts.py"

_SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"
_SAM21_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_MEDSAM2_URL = "https://huggingface.co/wanglab/MedSAM2/resolve/main/"

# MedSAM2 (bowang-lab) is SAM 2.1 Hiera-T fine-tuned at 512 px. Its repository ships
# sam2/configs/sam2.1_hiera_t512.yaml, which differs from SAM 2's sam2.1_hiera_t.yaml in three values only:
# the input size and the memory attention's RoPE feature sizes (512 px / stride 16 = 32). We build it as
# SAM 2's own config with those three values overridden rather than keeping a copy of the file.
MEDSAM2_OVERRIDES = (
    "++model.image_size=512",
    "++model.memory_attention.layer.self_attention.feat_sizes=[32,32]",
    "++model.memory_attention.layer.cross_attention.feat_sizes=[32,32]",
)


@dataclass(frozen=True)
class CheckpointSpec:
    name: str
    config: str  # hydra config name inside the sam2 package
    filename: str
    url: str
    # Meta publishes no checksums; these SHA-256 values and sizes are the ones pinned by other projects
    # (micro-sam's micro_sam/v2/util.py for SAM 2.1, SlicerSegmentWithSAM for SAM 2), where several agree.
    # None where nobody pins one (MedSAM2): such a file is checked only by loading it strictly.
    sha256: str | None
    size: int | None
    # hydra overrides applied on top of ``config`` (MedSAM2's 512 px), before the user's ``image_size``
    overrides: tuple[str, ...] = ()
    family: str = "SAM 2"

    @property
    def path(self) -> str:
        return os.path.join(CHECKPOINT_DIR, self.filename)


def _spec(name, config, filename, base_url, sha256, size, **kw):
    return CheckpointSpec(name, config, filename, base_url + filename, sha256, size, **kw)


def _medsam2(name):
    return _spec(name, "configs/sam2.1/sam2.1_hiera_t.yaml", name + ".pt", _MEDSAM2_URL, None, None,
                 overrides=MEDSAM2_OVERRIDES, family="MedSAM2")


REGISTRY: dict[str, CheckpointSpec] = {
    s.name: s
    for s in [
        _spec("sam2_hiera_tiny", "configs/sam2/sam2_hiera_t.yaml", "sam2_hiera_tiny.pt", _SAM2_URL, "65b50056e05bcb13694174f51bb6da89c894b57b75ccdf0ba6352c597c5d1125", 155906050),
        _spec("sam2_hiera_small", "configs/sam2/sam2_hiera_s.yaml", "sam2_hiera_small.pt", _SAM2_URL, "95949964d4e548409021d47b22712d5f1abf2564cc0c3c765ba599a24ac7dce3", 184309650),
        _spec("sam2_hiera_base_plus", "configs/sam2/sam2_hiera_b+.yaml", "sam2_hiera_base_plus.pt", _SAM2_URL, "d0bb7f236400a49669ffdd1be617959a8b1d1065081789d7bbff88eded3a8071", 323493298),
        _spec("sam2_hiera_large", "configs/sam2/sam2_hiera_l.yaml", "sam2_hiera_large.pt", _SAM2_URL, "7442e4e9b732a508f80e141e7c2913437a3610ee0c77381a66658c3a445df87b", 897952466),
        _spec("sam2.1_hiera_tiny", "configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt", _SAM21_URL, "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69", 156008466),
        _spec("sam2.1_hiera_small", "configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt", _SAM21_URL, "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38", 184416285),
        _spec("sam2.1_hiera_base_plus", "configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt", _SAM21_URL, "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5", 323606802),
        _spec("sam2.1_hiera_large", "configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt", _SAM21_URL, "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318", 898083611),
        # MedSAM2's published files (its download.sh); MedSAM2_latest is the one its README recommends
        _medsam2("MedSAM2_latest"),
        _medsam2("MedSAM2_2411"),
        _medsam2("MedSAM2_CTLesion"),
        _medsam2("MedSAM2_MRI_LiverLesion"),
        _medsam2("MedSAM2_US_Heart"),
    ]
}
DEFAULT_CHECKPOINT = "sam2.1_hiera_tiny"


class CheckpointMissing(FileNotFoundError):
    pass


class CheckpointCorrupt(ValueError):
    """The file is there but is not the checkpoint it should be (size, checksum, or it does not load)."""


@dataclass(frozen=True)
class ResolvedCheckpoint:
    spec: CheckpointSpec | None  # None for a user's own .pt file
    config: str
    path: str | None  # None when building random weights
    random_weights: bool

    @property
    def overrides(self) -> tuple[str, ...]:
        return self.spec.overrides if self.spec else ()

    @property
    def name(self) -> str:
        if self.spec and self.path in (None, self.spec.path):
            return self.spec.name
        return os.path.basename(self.path or "")


def _spec_for_file(path: str, config: str | None) -> CheckpointSpec | None:
    """The registry entry a user's file is named like (its config and overrides), None with ``config``."""
    if config:
        return None
    base = os.path.basename(path)
    for spec in REGISTRY.values():
        if base == spec.filename:
            return spec
    raise UnknownOption(
        f"cannot tell the SAM 2 config of checkpoint file {path!r}: name it like a registry file "
        f"({', '.join(s.filename for s in REGISTRY.values())}) or pass --conf config configs/sam2.1/sam2.1_hiera_t.yaml"
    )


def check_file(spec: CheckpointSpec, path: str, verify: bool = False) -> None:
    """Size always (a truncated download is the usual corruption), SHA-256 too with ``verify``; files with
    no pinned size or checksum (MedSAM2) are checked by loading them strictly."""
    size = os.path.getsize(path)
    if spec.size is not None and size != spec.size:
        raise CheckpointCorrupt(
            f"SAM 2 checkpoint {path} is {size:,} bytes, but {spec.name} is {spec.size:,} bytes (an interrupted "
            f"or wrong download?). Download it again with:\n    {DOWNLOAD_COMMAND} {spec.name}"
        )
    if verify and spec.sha256 is not None:
        digest = sha256_of(path)
        if digest != spec.sha256:
            raise CheckpointCorrupt(
                f"SAM 2 checkpoint {path}: SHA-256 {digest} is not {spec.name}'s {spec.sha256}. "
                f"Download it again with:\n    {DOWNLOAD_COMMAND} {spec.name}"
            )


def resolve_checkpoint(
    name_or_path: str | None, random_weights: bool = False, config: str | None = None, verify: bool = False
):
    """Turn ``--conf checkpoint`` into a config + file, or explain exactly what is missing or wrong.

    A registry file's size is checked every time; its full SHA-256 with ``verify`` (``--conf verify true``).
    """
    name_or_path = name_or_path or DEFAULT_CHECKPOINT
    if name_or_path in REGISTRY:
        spec = REGISTRY[name_or_path]
        if random_weights:
            return ResolvedCheckpoint(spec, config or spec.config, None, True)
        if not os.path.isfile(spec.path):
            raise CheckpointMissing(
                f"SAM 2 checkpoint {spec.name!r} not found at {spec.path}. Download it with:\n"
                f"    {DOWNLOAD_COMMAND} {spec.name}\n"
                f"(or run with --conf random_weights true for an UNTRAINED model, for tests only)"
            )
        check_file(spec, spec.path, verify)
        return ResolvedCheckpoint(spec, config or spec.config, spec.path, False)
    if name_or_path.endswith(".pt"):
        if not random_weights and not os.path.isfile(name_or_path):
            raise CheckpointMissing(f"SAM 2 checkpoint file not found: {name_or_path}")
        spec = _spec_for_file(name_or_path, config)
        cfg = config or spec.config
        if random_weights:
            return ResolvedCheckpoint(spec, cfg, None, True)
        return ResolvedCheckpoint(spec, cfg, os.path.abspath(name_or_path), False)
    raise UnknownOption(
        f"unknown checkpoint {name_or_path!r}; known names: {', '.join(REGISTRY)} (or a path to a .pt file)"
    )


def sha256_of(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
