"""Classical reconstruction: the EM step, MLEM, OSEM, MAP with the RDP, post-filter.

Written against :class:`pet_dl.forward_model.PETForwardModel`; see ``docs/recon.md``.
The entry point for a scan is :func:`reconstruct_classical` (the learned reconstruction is
:func:`pet_dl.inference.reconstruct_with_network`). A 2D brain phantom, simulated on a single mMR ring
and reconstructed by OSEM in Bq/mL (about a second)::

    >>> import torch
    >>> from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
    >>> from pet_dl.metrics import nrmse
    >>> from pet_dl.phantoms import make_phantom
    >>> from pet_dl.recon import reconstruct_classical
    >>> from pet_dl.simulate import simulate_scan
    >>> sinogram = SinogramGeometry.two_d(get_scanner("mmr"), num_radial=128, view_mashing=4)
    >>> grid = ImageGeometry.centered((48, 48, 1), (5.2, 5.2, 5.2))
    >>> phantom = make_phantom("brain", grid, torch.Generator().manual_seed(0))
    >>> scan = simulate_scan(phantom.activity, phantom.mu, sinogram, grid, duration_s=600,
    ...                      psf_fwhm_mm=4.5, generator=torch.Generator().manual_seed(1))
    >>> image = reconstruct_classical(scan, "osem", num_iterations=4, num_subsets=7)
    >>> image.shape, image.dtype
    (torch.Size([48, 48, 1]), torch.float32)
    >>> abs(float(image.sum() / phantom.activity.sum()) - 1) < 0.05   # counts are kept
    True
    >>> float(nrmse(image, phantom.activity)) < 0.3
    True
"""

from pet_dl.recon.em import OrderedSubsets, em_ratio, em_update, mlem, osem, uniform_initial_image
from pet_dl.recon.filters import gaussian_postfilter
from pet_dl.recon.map import map_rdp
from pet_dl.recon.rdp import rdp_gradient_and_curvature, rdp_value
from pet_dl.recon.reconstruct import ALGORITHMS, reconstruct_classical

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
    "reconstruct_classical",
    "uniform_initial_image",
]
