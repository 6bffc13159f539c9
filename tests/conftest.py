"""Suite-wide settings: one torch thread per test process.

The machines are 2-core and the suite runs in two xdist workers; more torch
threads than cores made tiny fits 25x slower under load.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
