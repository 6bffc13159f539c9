"""Validation, device and seeding utilities."""

from ._device import resolve_device, seeded, torch_generator, torch_seed
from ._threads import flush_denormal, limit_threads
from ._validation import (
    check_sample_domain,
    check_X,
    check_y,
    is_dataset,
    is_out_of_core,
    resolve_count,
    validate_X,
)

__all__ = [
    "check_X",
    "check_sample_domain",
    "check_y",
    "flush_denormal",
    "is_dataset",
    "is_out_of_core",
    "limit_threads",
    "resolve_count",
    "resolve_device",
    "seeded",
    "torch_generator",
    "torch_seed",
    "validate_X",
]
