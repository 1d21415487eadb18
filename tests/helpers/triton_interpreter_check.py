"""Run by tests/kernels/test_kernels.py in a subprocess with ``TRITON_INTERPRET=1``: Triton kernels vs the reference on CPU.

Prints one JSON line per case: ``{"case": ..., "failures": [[quantity, error, allowed], ...]}``.
``--offsets`` runs the case of element offsets past 2**31 instead (one line).
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: `helpers`

from lit_ppool.functional import pool_geometry
from lit_ppool.kernels.triton_kernels import TritonPPool2dFunction

from helpers.kernel_parity import GEOMETRIES, make_input, parity_failures

CASES = [
    # (geometry index, dtype, alpha, per-channel, layout)
    (0, "float32", 1.5, False, "nchw"),
    (1, "float32", 0.0, True, "channels_last"),
    (3, "float32", 100.0, False, "nchw"),
    (5, "bfloat16", 1.5, True, "nchw"),
    (4, "float16", 3.0, False, "channels_last"),
    (1, "float32", 2.0, False, "sliced"),  # non-contiguous: dL/dx goes through its own strides
]


def offsets_past_int32_failures() -> list:
    """A (1, 2, 3, 5) view whose rows lie 2**30 elements apart: row 2 starts past 2**31, where an
    int32 ``h * sxh`` wraps around. The 4 GiB storage is virtual memory: only the 30 elements
    written are touched (as in a channels-last plane of more than 2**31 elements, on a GPU)."""
    shape, strides = (1, 2, 3, 5), (0, 1, 2**30, 2)
    storage = torch.empty(2**31 + 16, dtype=torch.float16)
    x = storage.as_strided(shape, strides)
    x.copy_(make_input(shape, torch.float16))
    alpha = torch.tensor([0.5, 2.0])
    return parity_failures(TritonPPool2dFunction, x, alpha, pool_geometry(*GEOMETRIES[1]))


if __name__ == "__main__":
    if sys.argv[1:] == ["--offsets"]:
        print(json.dumps({"case": "offsets past 2**31", "failures": offsets_past_int32_failures()}))
        sys.exit()
    for index, dtype_name, value, per_channel, layout in CASES:
        dtype = getattr(torch, dtype_name)
        x = make_input((2, 3, 7, 16) if layout == "sliced" else (2, 3, 7, 8), dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif layout == "sliced":
            x = x[..., 1:15:2]
        alpha = torch.full((3,) if per_channel else (1,), value)
        failures = parity_failures(TritonPPool2dFunction, x, alpha, pool_geometry(*GEOMETRIES[index]))
        print(json.dumps({"case": [index, dtype_name, value, per_channel, layout], "failures": failures}))
