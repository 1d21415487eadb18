"""Constants shared by the P-pooling kernels."""

EPS = 1e-6
"""Floor applied to the inputs when computing the P-pooling weights (see ``lit_ppool.functional``)."""
