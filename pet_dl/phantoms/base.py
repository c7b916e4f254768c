"""The :class:`Phantom` record, 511 keV attenuation values and the painter that builds phantoms.

Phantoms are painted shape by shape: each shape replaces the activity and mu of the
fraction of every voxel that it covers (partial volumes from :func:`rasterize`), and
claims the voxel's tissue or lesion label when it covers at least half of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from pet_dl.phantoms.shapes import Shape, rasterize, rasterize_box

if TYPE_CHECKING:
    from pet_dl.geometry import ImageGeometry

# Linear attenuation coefficients at 511 keV, 1/mm.
MU_AIR = 0.0
MU_LUNG = 0.0025  # inflated lung, density about 0.26 g/mL
MU_FAT = 0.0090  # adipose tissue
MU_WATER = 0.0096  # water and soft tissue
MU_SOFT_TISSUE = 0.0099  # muscle, organs (density about 1.04 g/mL)
MU_SPONGY_BONE = 0.0110  # trabecular bone and marrow (vertebral bodies)
MU_BONE = 0.0172  # cortical bone (skull)
MU_PMMA = 0.0111  # acrylic (NEMA phantom walls)

# Mean FDG concentration in the body for 370 MBq in 70 kg after about 60 min of uptake and
# decay (SUV 1), Bq/mL. Organ uptakes are given as multiples of it.
SUV1_BQML = 4000.0


@dataclass(frozen=True)
class Lesion:
    """A hot sphere with known activity (a lesion or a NEMA sphere).

    Attributes:
        label: its id in :attr:`Phantom.labels` (1, 2, ...).
        name: e.g. ``"sphere_37mm"`` or ``"lesion_1"``.
        centre_mm: centre in world mm ``(x, y, z)``.
        diameter_mm: diameter, mm.
        activity_bqml: activity concentration inside, Bq/mL.
        background_bqml: activity of the tissue it replaced (its centre voxel before
            insertion), Bq/mL; ``activity_bqml / background_bqml`` is its contrast.
    """

    label: int
    name: str
    centre_mm: tuple[float, float, float]
    diameter_mm: float
    activity_bqml: float
    background_bqml: float

    @property
    def contrast(self) -> float:
        """Lesion-to-background activity ratio (inf for a cold background)."""
        return (
            self.activity_bqml / self.background_bqml if self.background_bqml > 0 else float("inf")
        )


@dataclass
class Phantom:
    """A digital phantom on an image grid.

    Attributes:
        name: ``"brain"``, ``"torso"``, ``"nema"`` or a user name.
        image: the grid.
        activity: ``(nx, ny, nz)`` float32, Bq/mL.
        mu: ``(nx, ny, nz)`` float32, linear attenuation at 511 keV in 1/mm.
        labels: ``(nx, ny, nz)`` int64: 0 background, ``k >= 1`` lesion or sphere ``k``
            (the voxels it covers at least half of).
        tissue: ``(nx, ny, nz)`` int64 tissue class of each voxel (see ``tissues``; 0 air).
        tissues: tissue name -> class id in ``tissue``.
        lesions: the hot spheres, in label order.
        seed: the generator's initial seed, when known.
    """

    name: str
    image: ImageGeometry
    activity: torch.Tensor
    mu: torch.Tensor
    labels: torch.Tensor
    tissue: torch.Tensor
    tissues: dict[str, int]
    lesions: tuple[Lesion, ...] = ()
    seed: int | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def regions(self) -> dict[str, int]:
        """Lesion / sphere name -> label id in :attr:`labels`."""
        return {lesion.name: lesion.label for lesion in self.lesions}

    @property
    def lesion_activity_bqml(self) -> dict[int, float]:
        """Label id -> known activity concentration (Bq/mL)."""
        return {lesion.label: lesion.activity_bqml for lesion in self.lesions}

    def copy(self) -> Phantom:
        """A deep copy (tensors cloned)."""
        return replace(
            self,
            activity=self.activity.clone(),
            mu=self.mu.clone(),
            labels=self.labels.clone(),
            tissue=self.tissue.clone(),
            tissues=dict(self.tissues),
            extra=dict(self.extra),
        )


class Canvas:
    """Paints shapes into activity / mu / tissue / label volumes on one image grid."""

    def __init__(self, image: ImageGeometry, supersampling: int = 4) -> None:
        shape = tuple(int(n) for n in image.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"image shape must be 3 positive sizes (nx, ny, nz), got {shape}")
        self.image = image
        self.supersampling = supersampling
        self.activity = torch.zeros(shape, dtype=torch.float64)
        self.mu = torch.zeros(shape, dtype=torch.float64)
        self.tissue = torch.zeros(shape, dtype=torch.int64)
        self.labels = torch.zeros(shape, dtype=torch.int64)
        self.tissues: dict[str, int] = {"air": 0}

    def fraction(self, shape: Shape) -> torch.Tensor:
        """Fraction of each voxel inside ``shape``, ``(nx, ny, nz)`` float64."""
        return rasterize(
            shape,
            tuple(int(n) for n in self.image.shape),  # type: ignore[arg-type]
            tuple(float(v) for v in self.image.voxel_size_mm),  # type: ignore[arg-type]
            tuple(float(v) for v in self.image.origin_mm),  # type: ignore[arg-type]
            self.supersampling,
        )

    def paint(
        self,
        shape: Shape,
        activity_bqml: float,
        mu_per_mm: float,
        tissue: str | None = None,
        label: int | None = None,
    ) -> None:
        """Replace activity and mu by the given values where ``shape`` is (partial volumes)."""
        tid = self.tissues.setdefault(tissue, len(self.tissues)) if tissue is not None else None
        boxed = rasterize_box(
            shape,
            tuple(int(n) for n in self.image.shape),  # type: ignore[arg-type]
            tuple(float(v) for v in self.image.voxel_size_mm),  # type: ignore[arg-type]
            tuple(float(v) for v in self.image.origin_mm),  # type: ignore[arg-type]
            self.supersampling,
        )
        if boxed is None:
            return
        f, sl = boxed
        act, mu = self.activity[sl], self.mu[sl]
        act.mul_(1.0 - f).add_(activity_bqml * f)
        mu.mul_(1.0 - f).add_(mu_per_mm * f)
        major = f >= 0.5
        if tid is not None:
            self.tissue[sl][major] = tid
        if label is not None:
            self.labels[sl][major] = label

    def to_phantom(
        self, name: str, lesions: tuple[Lesion, ...] = (), seed: int | None = None
    ) -> Phantom:
        """The painted volumes as a :class:`Phantom` (activity and mu in float32)."""
        return Phantom(
            name=name,
            image=self.image,
            activity=self.activity.to(torch.float32),
            mu=self.mu.to(torch.float32),
            labels=self.labels.clone(),
            tissue=self.tissue.clone(),
            tissues=dict(self.tissues),
            lesions=lesions,
            seed=seed,
        )


def uniform(generator: torch.Generator, low: float, high: float) -> float:
    """One draw from U(low, high) using ``generator``."""
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def check_fov(image: ImageGeometry, half_width_mm: float, half_depth_mm: float, what: str) -> None:
    """Raise ValueError when the grid does not cover +-half_width in x and +-half_depth in y."""
    for k, need in ((0, half_width_mm), (1, half_depth_mm)):
        lo = float(image.origin_mm[k]) - 0.5 * float(image.voxel_size_mm[k])
        hi = lo + int(image.shape[k]) * float(image.voxel_size_mm[k])
        if lo > -need or hi < need:
            raise ValueError(
                f"{what} phantom needs the image to cover {-need:.0f}..{need:.0f} mm along "
                f"axis {k}; the grid covers {lo:.0f}..{hi:.0f} mm (use more or larger voxels)"
            )


def seed_of(generator: torch.Generator) -> int | None:
    """The generator's initial seed (for metadata)."""
    try:
        return int(generator.initial_seed())
    except RuntimeError:
        return None
