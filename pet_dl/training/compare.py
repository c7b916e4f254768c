"""Held-out check of an exported network against OSEM at the same dose.

    python -m pet_dl.training.compare MODEL.safetensors data/generated/brain2d --split test

For each reduction factor: mean NRMSE and PSNR (``pet_dl.metrics``) of the network, of
the OSEM start image it was given, and of that OSEM image with the Gaussian post-filter
whose FWHM is best on the ``val`` split (the fair classical baseline).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

FWHMS_MM = (0.0, 3.0, 5.0, 7.0, 9.0)


def _batches(root: str | Path, split: str, batch_size: int) -> tuple[Any, DataLoader]:
    from pet_dl.datasets import PairedScanDataset
    from pet_dl.training.batching import BatchGeometry, Collate

    ds = PairedScanDataset(root, split)
    geometry = BatchGeometry(ds.sinogram, ds.image, ds.psf_fwhm_mm)
    return ds, DataLoader(ds, batch_size=batch_size, collate_fn=Collate(geometry))


def best_postfilter(root: str | Path, batch_size: int = 8) -> dict[float, float]:
    """Per reduction factor, the post-filter FWHM (mm) with the lowest mean NRMSE on ``val``."""
    from pet_dl import metrics
    from pet_dl.recon import gaussian_postfilter

    ds, loader = _batches(root, "val", batch_size)
    scores: dict[tuple[float, float], list[float]] = defaultdict(list)
    for batch in loader:
        for fwhm in FWHMS_MM:
            x = gaussian_postfilter(batch["initial"], ds.image, fwhm) if fwhm else batch["initial"]
            err = metrics.nrmse(x, batch["target"])
            for d, e in zip(batch["dose_fraction"].tolist(), err.tolist()):
                scores[(round(1 / d), fwhm)].append(e)
    best: dict[float, float] = {}
    for factor in sorted({f for f, _ in scores}):
        best[factor] = min(FWHMS_MM, key=lambda w: sum(scores[(factor, w)]) / len(scores[(factor, w)]))
    return best


@torch.no_grad()
def compare(checkpoint: str | Path, root: str | Path, split: str = "test", batch_size: int = 8) -> list[dict]:
    """Rows ``{factor, n, nrmse_net, nrmse_osem, nrmse_osem_filtered, fwhm, psnr_*}``."""
    from pet_dl import metrics
    from pet_dl.io.checkpoint import load_checkpoint
    from pet_dl.models import build_model
    from pet_dl.recon import gaussian_postfilter
    from pet_dl.training.batching import to_recon_batch

    net = load_checkpoint(checkpoint, builder=build_model).model.eval()
    fwhm = best_postfilter(root, batch_size)
    ds, loader = _batches(root, split, batch_size)
    acc: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for batch in loader:
        target = batch["target"]
        pred = net(to_recon_batch(batch))
        osem = batch["initial"]
        for i, d in enumerate(batch["dose_fraction"].tolist()):
            f = round(1 / d)
            filt = gaussian_postfilter(osem[i], ds.image, fwhm[f]) if fwhm[f] else osem[i]
            for name, img in (("net", pred[i]), ("osem", osem[i]), ("osem_filtered", filt)):
                acc[f][f"nrmse_{name}"].append(float(metrics.nrmse(img, target[i])))
                acc[f][f"psnr_{name}"].append(float(metrics.psnr(img, target[i])))
    rows = []
    for f in sorted(acc):
        row: dict[str, Any] = {"factor": f, "n": len(acc[f]["nrmse_net"]), "fwhm_mm": fwhm[f]}
        row.update({k: sum(v) / len(v) for k, v in acc[f].items()})
        rows.append(row)
    return rows


def to_markdown(rows: list[dict]) -> str:
    """A Markdown table of :func:`compare`'s rows (NRMSE in %, PSNR in dB)."""
    lines = [
        "| reduction factor | scans | NRMSE network | NRMSE OSEM | NRMSE OSEM + filter (FWHM) "
        "| PSNR network | PSNR OSEM + filter |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['factor']} | {r['n']} | {100 * r['nrmse_net']:.1f} % | {100 * r['nrmse_osem']:.1f} % "
            f"| {100 * r['nrmse_osem_filtered']:.1f} % ({r['fwhm_mm']:g} mm) "
            f"| {r['psnr_net']:.2f} dB | {r['psnr_osem_filtered']:.2f} dB |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="exported .safetensors network")
    p.add_argument("data_dir", help="dataset folder with val/ and the split's shards")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args(argv)
    print(to_markdown(compare(args.checkpoint, args.data_dir, args.split, args.batch_size)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
