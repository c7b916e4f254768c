"""Classical reconstruction: the EM step, MLEM, OSEM, MAP with the RDP, post-filter.

Written against :class:`pet_dl.forward_model.PETForwardModel`; see ``docs/recon.md``.
"""

from pet_dl.recon.em import OrderedSubsets, em_ratio, em_update, mlem, osem, uniform_initial_image
from pet_dl.recon.filters import gaussian_postfilter
from pet_dl.recon.map import map_rdp
from pet_dl.recon.rdp import rdp_gradient_and_curvature, rdp_value
from pet_dl.recon.reconstruct import ALGORITHMS, reconstruct_scan

__all__ = [
    "ALGORITHMS",
    "OrderedSubsets",
    "em_ratio",
    "em_update",
    "gaussian_postfilter",
    "map_rdp",
    "mlem",
    "osem",
    "rdp_gradient_and_curvature",
    "rdp_value",
    "reconstruct_scan",
    "uniform_initial_image",
]
