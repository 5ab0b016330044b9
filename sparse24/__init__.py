"""sparse24: 2:4 semi-structured sparsity for LLMs — train sparse from scratch, prune trained models, run on
sparse tensor cores (or a dense masked path on any device)."""

__version__ = "0.1.0"

from sparse24.api import (  # noqa: E402
    apply_masked_decay,
    register_handler,
    set_dense_finetune,
    sparse_modules,
    sparsify,
    unsparsify,
    update_masks,
)
from sparse24.backends import BackendInfo, Plan, register_backend, resolve, select_backend  # noqa: E402
from sparse24.compress import check_24, pack_24_disk, unpack_24_disk  # noqa: E402
from sparse24.config import MagnitudeConfig, SparseConfig, SRSTEConfig, SSTEConfig  # noqa: E402
from sparse24.io import load_sparse, read_sparse24_config, save_sparse  # noqa: E402
from sparse24.linear import SparseLinear  # noqa: E402
from sparse24.loaders import load, register_loader  # noqa: E402
from sparse24.masks import (  # noqa: E402
    is_24,
    magnitude_mask_24,
    mvue_24,
    retained_fraction,
    soft_threshold_24,
    sste_scale,
    transposable_mask_24,
)
from sparse24.tracking import FlipTracker  # noqa: E402

__all__ = [
    "__version__", "sparsify", "unsparsify", "register_handler", "sparse_modules", "update_masks",
    "apply_masked_decay", "set_dense_finetune", "BackendInfo", "Plan", "register_backend", "resolve", "select_backend",
    "check_24", "pack_24_disk", "unpack_24_disk", "MagnitudeConfig", "SparseConfig", "SRSTEConfig", "SSTEConfig",
    "load", "register_loader", "load_sparse", "read_sparse24_config", "save_sparse", "SparseLinear", "is_24",
    "magnitude_mask_24", "mvue_24",
    "retained_fraction", "soft_threshold_24", "sste_scale", "transposable_mask_24", "FlipTracker",
]
