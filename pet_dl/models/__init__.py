"""Learned reconstruction models: UnrolledEM (FBSEM), LearnedPrimalDual, PostUNet.

Every model is called as ``model(batch: ReconBatch)`` and returns images
``(B, nx, ny, nz)`` in Bq/mL; build them from a config with :func:`build_model`.
"""

from pet_dl.models.batch import ReconBatch, initial_image
from pet_dl.models.learned_primal_dual import LearnedPrimalDual
from pet_dl.models.post_unet import PostUNet
from pet_dl.models.registry import MODEL_REGISTRY, build_model
from pet_dl.models.unrolled_em import UnrolledEM, fbsem_fusion

__all__ = [
    "MODEL_REGISTRY",
    "LearnedPrimalDual",
    "PostUNet",
    "ReconBatch",
    "UnrolledEM",
    "build_model",
    "fbsem_fusion",
    "initial_image",
]
