"""resa-interp: SAE feature analysis of reasoning models (the Resa paper's method as a toolkit).

Importing the package pins MKL's code branch (`runs.pin_blas_branch`) before torch makes its first matmul, so
that runs reproduce across CPUs of one kind; a `MKL_CBWR` set beforehand is kept.
"""

from resa_interp.runs import pin_blas_branch

pin_blas_branch()

__version__ = "0.1.0"
