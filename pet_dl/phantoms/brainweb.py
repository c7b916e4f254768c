"""FDG brain phantoms from the 20 BrainWeb normal-brain anatomies (real cortical folding).

BrainWeb (Aubert-Broche et al. 2006, IEEE TMI 25(11):1410) gives, per subject, a discrete
tissue label volume at 0.5 mm (``subjectNN_crisp_v.mnc.gz``: 0 background, 1 CSF, 2 grey
matter, 3 white matter, 4 fat, 5 muscle, 6 muscle/skin, 7 skull, 8 vessels, 9 around fat,
10 dura mater, 11 bone marrow). :func:`brainweb_phantom` turns one subject into a seeded FDG
phantom on any :class:`~pet_dl.geometry.ImageGeometry`:

- activity per tissue with uptake ratios drawn per phantom in physiological ranges
  (:data:`UPTAKE_RANGES`: grey matter 12-20 kBq/mL, grey:white 2.5-5, ...), times a smooth
  random field on the brain (5-20 % relative standard deviation);
- a 511 keV mu-map from the tissue classes (skull and marrow as bone);
- a random pose (rotations, isotropic scale 0.9-1.1, shift) and, on a one-plane grid, a random
  transverse slice from the skull base to the vertex (a 3D grid gets a random slab);
- partial volumes from sub-sampling the 0.5 mm labels in every voxel.

Lesions are added afterwards (:func:`pet_dl.phantoms.add_lesions`; default tissues: grey and
white matter). The labels are read once per subject into a cache of ``.npy`` files
(``$PET_DL_CACHE`` or ``~/.cache/pet_dl``, then memory-mapped); the MINC files are found in
``$PET_DL_BRAINWEB`` or ``$PET_DL_TEST_DATA/brainweb``.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pet_dl.phantoms.base import (
    MU_BONE,
    MU_FAT,
    MU_SOFT_TISSUE,
    MU_WATER,
    Phantom,
    seed_of,
    uniform,
)
from pet_dl.phantoms.cortex import smooth_random_field

if TYPE_CHECKING:
    from pet_dl.geometry import ImageGeometry

BRAINWEB_SUBJECTS: tuple[str, ...] = (
    "04", "05", "06", "18", "20", "38", "41", "42", "43", "44",
    "45", "46", "47", "48", "49", "50", "51", "52", "53", "54",
)
LABEL_VOXEL_MM = 0.5
# BrainWeb label -> tissue name (0: air / background).
TISSUE_NAMES: tuple[str, ...] = (
    "air", "csf", "grey_matter", "white_matter", "fat", "muscle", "skin", "skull",
    "vessels", "around_fat", "dura", "marrow",
)
BRAIN_TISSUES = ("grey_matter", "white_matter")
# Linear attenuation at 511 keV per label, 1/mm (skull and marrow as bone).
MU_OF_LABEL: tuple[float, ...] = (
    0.0, MU_WATER, MU_SOFT_TISSUE, MU_SOFT_TISSUE, MU_FAT, MU_SOFT_TISSUE, MU_SOFT_TISSUE,
    MU_BONE, MU_SOFT_TISSUE, MU_FAT, MU_SOFT_TISSUE, MU_BONE,
)
# FDG uptake drawn per phantom: grey matter in Bq/mL, the grey:white ratio, and every other
# tissue as a fraction of grey matter (uniform in each range).
GREY_MATTER_RANGE_BQML = (12000.0, 20000.0)
GREY_WHITE_RANGE = (2.5, 5.0)
UPTAKE_RANGES: dict[str, tuple[float, float]] = {
    "csf": (0.0, 0.05),
    "fat": (0.03, 0.10),
    "muscle": (0.06, 0.18),
    "skin": (0.06, 0.18),
    "skull": (0.02, 0.08),
    "vessels": (0.10, 0.30),
    "around_fat": (0.03, 0.10),
    "dura": (0.08, 0.25),
    "marrow": (0.08, 0.25),
}
HETEROGENEITY_RANGE = (0.05, 0.20)
MAX_ROTATION_DEG = (8.0, 5.0, 15.0)  # about x (pitch), y (roll), z (yaw)
SCALE_RANGE = (0.9, 1.1)
MAX_SHIFT_MM = 6.0
# The slice (or slab centre) is drawn between these fractions of the brain's axial extent
# (0: lowest brain voxel, the cerebellum at the skull base; 1: vertex).
SLICE_RANGE = (0.05, 0.92)


def brainweb_dir() -> Path:
    """The folder of the BrainWeb ``subjectNN_crisp_v.mnc.gz`` files.

    ``$PET_DL_BRAINWEB``, else ``$PET_DL_TEST_DATA/brainweb``.

    Raises:
        ValueError: neither is set or the folder does not exist.
    """
    env = os.environ.get("PET_DL_BRAINWEB")
    if env is None and os.environ.get("PET_DL_TEST_DATA"):
        env = str(Path(os.environ["PET_DL_TEST_DATA"]) / "brainweb")
    if env is None or not Path(env).is_dir():
        raise ValueError(
            "BrainWeb anatomies not found: set PET_DL_BRAINWEB to the folder of the "
            "subjectNN_crisp_v.mnc.gz files (or PET_DL_TEST_DATA to the shared data)"
        )
    return Path(env)


def _cache_dir() -> Path:
    root = os.environ.get("PET_DL_CACHE") or str(Path.home() / ".cache" / "pet_dl")
    return Path(root) / "brainweb"


def brainweb_labels(subject: str, directory: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One subject's tissue labels in world axis order, read-only and memory-mapped.

    Args:
        subject: ``"04"`` ... ``"54"`` (:data:`BRAINWEB_SUBJECTS`).
        directory: folder of the MINC files (default :func:`brainweb_dir`).

    Returns:
        ``(labels, origin_mm)``: labels ``(nx, ny, nz)`` uint8 (axis k = world axis k, RAS+,
        voxels of :data:`LABEL_VOXEL_MM`), and the world position of voxel ``(0, 0, 0)``'s
        centre, ``(3,)`` mm.

    Raises:
        ValueError: unknown subject or missing file.
    """
    if subject not in BRAINWEB_SUBJECTS:
        raise ValueError(f"unknown BrainWeb subject {subject!r}; choose one of {', '.join(BRAINWEB_SUBJECTS)}")
    cache = _cache_dir()
    labels_path = cache / f"subject{subject}_labels.npy"
    origin_path = cache / f"subject{subject}_origin.npy"
    if not (labels_path.is_file() and origin_path.is_file()):
        import nibabel as nib

        src = Path(directory) if directory is not None else brainweb_dir()
        path = src / f"subject{subject}_crisp_v.mnc.gz"
        if not path.is_file():
            raise ValueError(f"BrainWeb subject {subject}: {path} does not exist")
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
        affine = np.asarray(img.affine)
        # Voxel axis j runs along the world axis where column j of the affine is non-zero.
        world_axis = [int(np.argmax(np.abs(affine[:3, j]))) for j in range(3)]
        order = [world_axis.index(k) for k in range(3)]
        labels = np.transpose(np.rint(data).astype(np.uint8), order)
        steps = np.array([affine[k, order[k]] for k in range(3)])
        origin = affine[:3, 3].copy()
        for k in range(3):  # make every axis ascend in world coordinates
            if steps[k] < 0:
                labels = np.flip(labels, axis=k)
                origin[k] += steps[k] * (labels.shape[k] - 1)
        if not np.allclose(np.abs(steps), LABEL_VOXEL_MM):
            raise ValueError(f"{path}: voxels of {np.abs(steps)} mm, expected {LABEL_VOXEL_MM}")
        cache.mkdir(parents=True, exist_ok=True)
        for target, array in ((labels_path, np.ascontiguousarray(labels)), (origin_path, origin)):
            tmp = target.with_name(target.name + f".{os.getpid()}.tmp.npy")
            np.save(tmp, array)
            os.replace(tmp, target)
    return np.load(labels_path, mmap_mode="r"), np.load(origin_path)


def _rotation(angles_deg: tuple[float, float, float]) -> torch.Tensor:
    """Rotation matrix ``Rz @ Ry @ Rx`` for angles about x, y, z (degrees), ``(3, 3)`` float64."""
    ax, ay, az = (math.radians(a) for a in angles_deg)
    rx = torch.tensor([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = torch.tensor([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = torch.tensor([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return (rz @ ry @ rx).to(torch.float64)


@functools.lru_cache(maxsize=len(BRAINWEB_SUBJECTS))
def _brain_extent(subject: str, directory: str | None) -> tuple[np.ndarray, float, float]:
    """In-plane centre of the head (mm, ``(2,)``) and the brain's axial extent (mm), of one
    subject: a pass over its whole label volume, done once per process."""
    labels, origin = brainweb_labels(subject, directory)
    head = labels > 0
    xs = np.nonzero(head.any(axis=(1, 2)))[0]
    ys = np.nonzero(head.any(axis=(0, 2)))[0]
    brain = np.isin(labels[::4, ::4, :], (2, 3)).any(axis=(0, 1))
    zs = np.nonzero(brain)[0]
    centre = origin[:2] + LABEL_VOXEL_MM * np.array(
        [(xs[0] + xs[-1]) / 2.0, (ys[0] + ys[-1]) / 2.0]
    )
    return centre, origin[2] + LABEL_VOXEL_MM * zs[0], origin[2] + LABEL_VOXEL_MM * zs[-1]


def _tissue_fractions(
    labels: np.ndarray, origin: np.ndarray, points: torch.Tensor
) -> torch.Tensor:
    """Fraction of each label among the sub-samples of every voxel.

    Args:
        labels: ``(Lx, Ly, Lz)`` uint8 label volume; ``origin``: its voxel (0,0,0) in mm.
        points: ``(V, S, 3)`` sub-sample positions in the label volume's world frame, mm.

    Returns:
        ``(V, len(TISSUE_NAMES))`` float64 fractions (points outside the volume are air).
    """
    num_voxels, num_sub, _ = points.shape
    idx = torch.round((points - torch.as_tensor(origin)) / LABEL_VOXEL_MM).to(torch.int64)
    shape = torch.tensor(labels.shape)
    inside = ((idx >= 0) & (idx < shape)).all(dim=-1)
    idx = torch.where(inside[..., None], idx, torch.zeros_like(idx))
    flat = (idx[..., 0] * shape[1] + idx[..., 1]) * shape[2] + idx[..., 2]
    values = np.asarray(labels).reshape(-1)[flat.reshape(-1).numpy()]
    lab = torch.from_numpy(values.astype(np.int64)).reshape(num_voxels, num_sub)
    lab = torch.where(inside, lab, torch.zeros_like(lab))
    n = len(TISSUE_NAMES)
    key = torch.arange(num_voxels)[:, None] * n + lab.clamp(0, n - 1)
    counts = torch.bincount(key.reshape(-1), minlength=num_voxels * n)
    return counts.reshape(num_voxels, n).to(torch.float64) / num_sub


def brainweb_phantom(
    image: ImageGeometry,
    generator: torch.Generator,
    *,
    subject: str,
    directory: str | os.PathLike[str] | None = None,
    max_subsamples: int = 4,
    pose: bool = True,
    slice_position: float | None = None,
) -> Phantom:
    """A seeded FDG phantom of one BrainWeb subject on ``image``.

    Random per generator (in this order): the uptake of every tissue
    (:data:`GREY_MATTER_RANGE_BQML`, :data:`GREY_WHITE_RANGE`, :data:`UPTAKE_RANGES`), the
    heterogeneity and its smooth field, the pose (rotations up to :data:`MAX_ROTATION_DEG`,
    scale in :data:`SCALE_RANGE`, in-plane shift up to :data:`MAX_SHIFT_MM`) and the axial
    position of the grid's centre plane in the brain (:data:`SLICE_RANGE`). The head's
    in-plane centre is put at the grid's centre (plus the shift).

    Args:
        image: the grid (a one-plane grid is a transverse slice of thickness ``voxel_size[2]``).
        generator: seeded torch generator; the same seed gives the same phantom.
        subject: BrainWeb subject (:data:`BRAINWEB_SUBJECTS`).
        directory: folder of the MINC files (default :func:`brainweb_dir`).
        max_subsamples: at most this many label samples per voxel and axis (partial volumes).
        pose: False keeps the head unrotated, unscaled and centred (tests).
        slice_position: fix the axial position (0..1 of the brain's extent) instead of drawing it.

    Returns:
        Phantom ``"brainweb"``: activity ``(nx, ny, nz)`` Bq/mL, mu 1/mm, ``tissue`` (the
        majority BrainWeb label of each voxel; ``tissues`` maps :data:`TISSUE_NAMES` to labels),
        no lesions; ``extra`` holds the drawn grey-matter activity, grey:white ratio,
        heterogeneity, scale and slice position.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    g = generator
    labels, origin = brainweb_labels(subject, directory)
    grey = uniform(g, *GREY_MATTER_RANGE_BQML)
    ratio = uniform(g, *GREY_WHITE_RANGE)
    uptake = torch.zeros(len(TISSUE_NAMES), dtype=torch.float64)
    uptake[TISSUE_NAMES.index("grey_matter")] = grey
    uptake[TISSUE_NAMES.index("white_matter")] = grey / ratio
    for name, (lo, hi) in UPTAKE_RANGES.items():
        uptake[TISSUE_NAMES.index(name)] = grey * uniform(g, lo, hi)
    heterogeneity = uniform(g, *HETEROGENEITY_RANGE)
    field_gen = torch.Generator().manual_seed(int(torch.randint(2**62, (), generator=g)))
    if pose:
        angles = tuple(uniform(g, -m, m) for m in MAX_ROTATION_DEG)
        scale = uniform(g, *SCALE_RANGE)
        shift = torch.tensor([uniform(g, -MAX_SHIFT_MM, MAX_SHIFT_MM) for _ in range(2)] + [0.0])
    else:
        angles, scale, shift = (0.0, 0.0, 0.0), 1.0, torch.zeros(3, dtype=torch.float64)
    position = uniform(g, *SLICE_RANGE) if slice_position is None else float(slice_position)

    centre_xy, z_lo, z_hi = _brain_extent(subject, None if directory is None else str(directory))
    anchor = torch.tensor([centre_xy[0], centre_xy[1], z_lo + position * (z_hi - z_lo)], dtype=torch.float64)
    shape = tuple(int(n) for n in image.shape)
    vs = torch.tensor([float(v) for v in image.voxel_size_mm], dtype=torch.float64)
    grid_origin = torch.tensor([float(o) for o in image.origin_mm], dtype=torch.float64)
    grid_centre = grid_origin + vs * (torch.tensor(shape, dtype=torch.float64) - 1) / 2

    # Sub-sample offsets inside a voxel (fractions of a voxel, centred on 0).
    counts = [max(1, min(max_subsamples, math.ceil(float(v) / LABEL_VOXEL_MM))) for v in vs]
    axes = [(torch.arange(c, dtype=torch.float64) + 0.5) / c - 0.5 for c in counts]
    offsets = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3) * vs
    voxel_idx = torch.stack(
        torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in shape), indexing="ij"), dim=-1
    ).reshape(-1, 3)
    centres = grid_origin + voxel_idx * vs  # (V, 3) grid world mm
    rotation = _rotation(angles)  # type: ignore[arg-type]

    def to_anatomy(p: torch.Tensor) -> torch.Tensor:  # grid world mm -> label world mm
        return anchor + ((p - grid_centre - shift) / scale) @ rotation.T

    points = to_anatomy(centres[:, None, :] + offsets[None, :, :])
    fractions = _tissue_fractions(labels, origin, points)  # (V, T)
    mu_of = torch.tensor(MU_OF_LABEL, dtype=torch.float64)
    brain_cols = [TISSUE_NAMES.index(t) for t in BRAIN_TISSUES]
    field = smooth_random_field(field_gen, to_anatomy(centres), (15.0, 60.0))
    field = (1.0 + heterogeneity * field).clamp(0.5, 1.5)
    brain_act = fractions[:, brain_cols] @ uptake[brain_cols]
    activity = fractions @ uptake + brain_act * (field - 1.0)
    mu = fractions @ mu_of
    tissue = fractions.argmax(dim=1)
    return Phantom(
        name="brainweb",
        image=image,
        activity=activity.reshape(shape).to(torch.float32),
        mu=mu.reshape(shape).to(torch.float32),
        labels=torch.zeros(shape, dtype=torch.int64),
        tissue=tissue.reshape(shape),
        tissues={name: k for k, name in enumerate(TISSUE_NAMES)},
        seed=seed_of(generator),
        extra={
            "grey_matter_bqml": grey, "grey_white_ratio": ratio, "heterogeneity": heterogeneity,
            "scale": scale, "slice_position": position,
        },
    )
