"""Run by tests/test_kernels.py in a subprocess with ``TRITON_INTERPRET=1``: Triton kernels vs the reference on CPU.

Prints one JSON line per case: ``{"case": ..., "failures": [[quantity, error, allowed], ...]}``.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

from kernel_parity import GEOMETRIES, make_input, parity_failures  # noqa: E402

from lit_ppool.functional import pool_geometry  # noqa: E402
from lit_ppool.kernels.triton_kernels import TritonPPool2dFunction  # noqa: E402

CASES = [
    # (geometry index, dtype, alpha, per-channel, channels-last)
    (0, "float32", 1.5, False, False),
    (1, "float32", 0.0, True, True),
    (3, "float32", 100.0, False, False),
    (5, "bfloat16", 1.5, True, False),
    (4, "float16", 3.0, False, True),
]

if __name__ == "__main__":
    for index, dtype_name, value, per_channel, channels_last in CASES:
        dtype = getattr(torch, dtype_name)
        x = make_input((2, 3, 7, 8), dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        alpha = torch.full((3,) if per_channel else (1,), value)
        failures = parity_failures(TritonPPool2dFunction, x, alpha, pool_geometry(*GEOMETRIES[index]))
        print(json.dumps({"case": [index, dtype_name, value, per_channel, channels_last], "failures": failures}))
