"""Validation, device and seeding utilities."""

from ._device import resolve_device, torch_generator, torch_seed
from ._validation import check_fraction_or_int, check_X, check_Xy, check_y, is_dataset

__all__ = [
    "check_X",
    "check_Xy",
    "check_fraction_or_int",
    "check_y",
    "is_dataset",
    "resolve_device",
    "torch_generator",
    "torch_seed",
]
