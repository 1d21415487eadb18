"""Run by tests/kernels/test_kernels.py in a subprocess with ``ATEN_CPU_CAPABILITY`` set: the C++ kernel
built for that ISA (its own cached build) against the float64 oracle, with flat and dense alphas.

Prints one JSON object: the extension's module name and the parity failures (empty when it passes).
"""

import itertools
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: `helpers`

from lit_ppool.kernels.cpu import CppPPool2dFunction, load_extension  # noqa: E402

from helpers.kernel_parity import cases, dense_cases, parity_failures  # noqa: E402

if __name__ == "__main__":
    failures = []
    flat = cases(dtypes=(torch.float32, torch.bfloat16), alphas=(0.0, 1.5, 100.0))
    dense = dense_cases(dtypes=(torch.float32, torch.bfloat16), tops=(100.0,), forms=("full", "per_position"))
    for spec, x, alpha, geometry in itertools.chain(flat, dense):
        for layout in (torch.contiguous_format, torch.channels_last):
            x = x.contiguous(memory_format=layout)
            failures += [
                [spec, str(layout), alpha.tolist(), *failure]
                for failure in parity_failures(CppPPool2dFunction, x, alpha, geometry)
            ]
    print(json.dumps({"module": load_extension().__name__, "failures": failures}, default=str))
