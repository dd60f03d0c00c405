"""A torch Dataset and DataLoader for ``tests/test_cleanup.py`` (imports torch: only
children import this module; the DataLoader's workers unpickle the dataset from here)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


class Zeros(Dataset[torch.Tensor]):
    """An endless supply of small zero tensors."""

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.zeros(4)


def make_loader() -> DataLoader[torch.Tensor]:
    """Two worker processes, the worker's default multiprocessing start method."""
    return DataLoader(Zeros(), batch_size=4, num_workers=2)
