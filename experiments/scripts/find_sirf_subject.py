"""Which BrainWeb subject is the SIRF brain made from? (issue 18: keep it out of training)

The SIRF brain (``sirf_phantoms/brain/emission.hv``: 15 planes of 6.75 mm, 1 mm pixels) is
BrainWeb-based; its brightest tissue follows the white matter. For every BrainWeb subject
(labels at 0.5 mm), every axial offset (1 mm steps) and the four left-right /
anterior-posterior flips, the subject's white-matter fraction is averaged over the same
15 slabs of 6.75 mm and compared with the SIRF planes at ONE common in-plane shift: the
normalised cross-correlations of the brain planes are summed over planes before the
maximum over shifts is taken, so a subject must match all planes at once.

    PET_DL_TEST_DATA=../shared/data python experiments/scripts/find_sirf_subject.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pet_dl.io.interfile import read_interfile_image
from pet_dl.phantoms.brainweb import BRAINWEB_SUBJECTS, brainweb_labels

N = 256  # FFT size (pixels of 1 mm)
PLANES = range(4, 15)  # SIRF planes holding brain


def _normalised(a: np.ndarray) -> np.ndarray:
    out = np.zeros((N, N), np.float32)
    out[: a.shape[0], : a.shape[1]] = (a - a.mean()) / (a.std() + 1e-12)
    return out


def subject_score(sirf: np.ndarray, labels: np.ndarray) -> tuple[float, int, tuple[bool, bool]]:
    """Best mean NCC of the SIRF brain planes with one subject, its z offset (mm) and flips."""
    wm = (np.asarray(labels) == 3).astype(np.float32)
    wm = wm[: wm.shape[0] // 2 * 2, : wm.shape[1] // 2 * 2]
    wm = wm.reshape(wm.shape[0] // 2, 2, wm.shape[1] // 2, 2, wm.shape[2]).mean((1, 3))  # 1 mm in-plane
    pad = 120  # SIRF planes may start below the label volume: allow offsets down to -60 mm
    wm = np.concatenate([np.zeros(wm.shape[:2] + (pad,), np.float32), wm], axis=2)
    cum = np.concatenate([np.zeros(wm.shape[:2] + (1,), np.float32), np.cumsum(wm, axis=2)], axis=2)
    tpl = np.stack([np.fft.rfft2(_normalised(sirf[:, :, k])) for k in PLANES])
    best = (-1.0, 0, (False, False))
    slab = 6.75 / 0.5  # label voxels per SIRF plane
    for offset in range(0, wm.shape[2] - int(15 * slab), 2):
        edges = [int(round(offset + k * slab)) for k in range(16)]
        planes = [(cum[:, :, edges[k + 1]] - cum[:, :, edges[k]]) for k in PLANES]
        if min(p.sum() for p in planes[2:]) < 50:
            continue
        for fx in (False, True):
            for fy in (False, True):
                acc = np.zeros((N, N // 2 + 1), np.complex64)
                for t, p in zip(tpl, planes):
                    p = p[::-1] if fx else p
                    p = p[:, ::-1] if fy else p
                    acc += t * np.conj(np.fft.rfft2(_normalised(p)))
                score = float(np.fft.irfft2(acc, s=(N, N)).max()) / (N * N * len(PLANES))
                if score > best[0]:
                    best = (score, (offset - pad) // 2, (fx, fy))
    return best


def main() -> None:
    root = Path(os.environ["PET_DL_TEST_DATA"])
    emission, _ = read_interfile_image(root / "sirf_phantoms/brain/emission.hv")
    sirf = emission.numpy()
    for subject in BRAINWEB_SUBJECTS:
        labels, _ = brainweb_labels(subject)
        score, offset, flips = subject_score(sirf, labels)
        print(f"subject {subject}: NCC {score:.3f} (offset {offset} mm, flips {flips})", flush=True)


if __name__ == "__main__":
    main()
