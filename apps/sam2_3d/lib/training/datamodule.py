"""Lightning's data side of a run: a ``Dataset`` of clips, a ``Dataset`` of held-out images, one DataModule.

Clip ``n`` is ``ClipSampler.clip(n)`` and a run's step ``n`` trains on clip ``n``: the train loader's
sampler starts each epoch at the trainer's global step, so a run resumed from a checkpoint mid-epoch
draws exactly the clips it would have drawn without the interruption. Under DDP step ``n`` is one clip
per rank: rank ``r`` of ``w`` trains clip ``n * w + r`` (so one device draws exactly as before), and the
held-out images are dealt out across ranks (``distributed.py``).
"""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset, Sampler

from .data import Clip, ClipSampler
from .distributed import rank_and_world


def _one(batch: list):
    return batch[0]  # batch size 1: a clip (or a held-out image) as it is, no tensor collation


class ClipDataset(Dataset):
    def __init__(self, sampler: ClipSampler, total_steps: int):
        self.sampler = sampler
        self.total_steps = total_steps

    def __len__(self) -> int:
        return self.total_steps

    def __getitem__(self, n: int) -> Clip:
        return self.sampler.clip(int(n))


class FromGlobalStep(Sampler):
    """The next ``steps_per_epoch`` clip indices, counted from the trainer's global step when an epoch
    (or a resumed epoch) starts iterating."""

    def __init__(self, datamodule: "ClipData", steps_per_epoch: int, total_steps: int):
        self.datamodule = datamodule
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self):
        trainer = self.datamodule.trainer
        start = int(trainer.global_step) if trainer is not None else 0
        rank, world = rank_and_world(trainer)
        return iter(n * world + rank for n in range(start, min(self.total_steps, start + self.steps_per_epoch)))


class ValidationImages(Dataset):
    def __init__(self, pairs: list[dict]):
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict | None:
        return None if self.pairs[i] is None else dict(self.pairs[i])


class ClipData(L.LightningDataModule):
    def __init__(self, sampler: ClipSampler, val_pairs: list[dict], steps_per_epoch: int, total_steps: int):
        super().__init__()
        self.clips = ClipDataset(sampler, total_steps)
        self.val_pairs = list(val_pairs)
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps

    def train_dataloader(self):
        return DataLoader(self.clips, batch_size=1, collate_fn=_one,
                          sampler=FromGlobalStep(self, self.steps_per_epoch, self.total_steps))

    def val_dataloader(self):
        rank, world = rank_and_world(self.trainer)
        # a rank without an image of its own still runs the loop (None: nothing to validate), so that it
        # joins the gather of every rank's results at the epoch's end
        share = self.val_pairs[rank::world] or ([None] if world > 1 else [])
        return DataLoader(ValidationImages(share), batch_size=1, collate_fn=_one)
