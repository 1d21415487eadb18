"""Run by tests/kernels/test_kernels.py in a subprocess with ``TRITON_INTERPRET=1``: Triton kernels vs the reference on CPU.

Prints one JSON line per case: ``{"case": ..., "failures": [[quantity, error, allowed], ...]}``:
the flat-alpha cases, the dense-alpha cases, then one with NaN in the input and in a dense alpha.
``--offsets`` runs the case of element offsets past 2**31 instead (one line).
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: `helpers`

from lit_ppool.functional import pool_geometry, pool_output_shape
from lit_ppool.kernels.triton_kernels import TritonPPool2dFunction

from helpers.kernel_parity import GEOMETRIES, dense_alpha, make_input, nan_failures, parity_failures

CASES = [
    # (geometry index, dtype, alpha, per-channel, layout)
    (0, "float32", 1.5, False, "nchw"),
    (1, "float32", 0.0, True, "channels_last"),
    (3, "float32", 100.0, False, "nchw"),
    (5, "bfloat16", 1.5, True, "nchw"),
    (4, "float16", 3.0, False, "channels_last"),
    (1, "float32", 2.0, False, "sliced"),  # non-contiguous: dL/dx goes through its own strides
]

DENSE_CASES = [
    # (geometry index, dtype, alphas in [0, top], dense form, layout)
    (0, "float32", 100.0, "full", "nchw"),
    (1, "float32", 4.0, "per_image", "channels_last"),
    (3, "float16", 100.0, "per_position", "nchw"),
    (5, "bfloat16", 4.0, "full", "channels_last"),
    (4, "float32", 4.0, "full", "sliced"),
]


def layout_input(dtype: torch.dtype, layout: str) -> torch.Tensor:
    x = make_input((2, 3, 7, 16) if layout == "sliced" else (2, 3, 7, 8), dtype)
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    return x[..., 1:15:2] if layout == "sliced" else x


def nan_case_failures() -> list:
    """NaN in one input and in one window's alpha of a full map: NaN where the oracle has it, nowhere else."""
    x = make_input((2, 3, 8, 8), torch.float32)
    x[1, 2, 5, 6] = float("nan")
    geometry = pool_geometry(*GEOMETRIES[0])
    alpha = dense_alpha((2, 3, *pool_output_shape((8, 8), geometry)), "full", 4.0)
    alpha[0, 1, 2, 1] = float("nan")
    return nan_failures(TritonPPool2dFunction, x, alpha, geometry)


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
        x = layout_input(getattr(torch, dtype_name), layout)
        alpha = torch.full((3,) if per_channel else (1,), value)
        failures = parity_failures(TritonPPool2dFunction, x, alpha, pool_geometry(*GEOMETRIES[index]))
        print(json.dumps({"case": [index, dtype_name, value, per_channel, layout], "failures": failures}))
    for index, dtype_name, top, form, layout in DENSE_CASES:
        x = layout_input(getattr(torch, dtype_name), layout)
        geometry = pool_geometry(*GEOMETRIES[index])
        alpha = dense_alpha((*x.shape[:2], *pool_output_shape(tuple(x.shape[-2:]), geometry)), form, top)
        failures = parity_failures(TritonPPool2dFunction, x, alpha, geometry)
        print(json.dumps({"case": [index, dtype_name, top, form, layout], "failures": failures}))
    print(json.dumps({"case": "NaN in the input and in a dense alpha", "failures": nan_case_failures()}))
