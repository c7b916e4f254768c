"""Real-data demo (``make demo-real``): a measured mMR listmode through the whole product.

Imports one frame of a Siemens mMR PETLINK listmode (:func:`pet_dl.importing.
import_listmode`, 2D: every ring pair rebinned into one direct plane) on the shipped
model's layout (128 radial bins, 126 views, 96 x 96 voxels of 2.6 mm, PSF 4.5 mm),
reconstructs it with OSEM (4 x 7, 4 mm post-filter) and, when installed, the shipped
network, and writes into ``--out``: ``scan_real.h5``, ``osem.nii.gz`` (and
``network.nii.gz``), ``real_images.png``, ``real_sinograms.png`` (prompts and the
randoms estimate) and ``report.md`` (counts, randoms and scatter fractions, the images
in Bq/mL).

    python -m pet_dl.demo_real --data ../shared/data/mmr_scanner --out demo_real_out
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pet_dl.geometry import ImageGeometry

#: The shipped 2D model's layout (see pet_dl.demo.DemoSettings).
NUM_RADIAL, VIEW_MASHING, IMAGE_SHAPE, VOXEL_MM, PSF_MM = 128, 2, (96, 96, 1), 2.6, 4.5


def _images_png(path: Path, panels: list[tuple[str, torch.Tensor]]) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from pet_dl.io.atomic import atomic_path

    vmax = max(float(torch.quantile(img.flatten(), 0.995)) for _, img in panels)
    fig = Figure(figsize=(3.2 * len(panels), 3.2), dpi=100)
    for k, (title, image) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        shown = ax.imshow(image[:, :, 0].T.numpy(), cmap="gray_r", vmin=0, vmax=vmax, origin="lower")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
        fig.colorbar(shown, ax=ax, label="Bq/mL", fraction=0.046)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def run_demo_real(
    listmode: str | Path,
    out_dir: str | Path,
    norm: str | Path | None = None,
    mu_map: str | Path | None = None,
    network: bool | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Import, reconstruct, draw and report (see the module docstring).

    Args:
        listmode: the ``.l`` file or its header.
        out_dir: output folder (created).
        norm: ``norm.n.hdr`` (None: unit efficiencies).
        mu_map: a mu-map of the same object (None: no attenuation correction).
        network: True requires the shipped network, False skips it, None uses it when
            installed.
        progress: messages on stderr.

    Returns:
        the report's numbers: ``prompts``, ``delayeds``, ``randoms_fraction``,
        ``duration_s``, and per method ``{name: {"mean_bqml", "max_bqml", "seconds"}}``
        under ``"images"``.
    """
    from pet_dl.demo import _network, sinogram_png
    from pet_dl.importing import import_listmode
    from pet_dl.io.atomic import atomic_path
    from pet_dl.io.nifti import save_nifti
    from pet_dl.io.scanfile import write_scan
    from pet_dl.recon import reconstruct_classical

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        if progress:
            print(f"[demo-real] {msg}", file=sys.stderr, flush=True)

    image = ImageGeometry.centered(IMAGE_SHAPE, VOXEL_MM)
    say(f"importing {Path(listmode).name}")
    scan, report = import_listmode(
        listmode, span="2d", norm_path=norm, mu_path=mu_map, num_radial=NUM_RADIAL,
        view_mashing=VIEW_MASHING, image=image, psf_fwhm_mm=PSF_MM, progress=progress,
    )
    write_scan(out / "scan_real.h5", scan)
    sinogram_png(out / "real_sinograms.png", [("prompts", scan.prompts), ("randoms estimate", scan.additive)])
    notes = list(report.notes)
    if mu_map is None:
        notes.append("no mu-map given: images are not attenuation corrected")
    net, why = (None, "network skipped (--no-network)") if network is False else _network()
    if net is None:
        if network:
            raise ValueError(why)
        notes.append(why)
    images: dict[str, torch.Tensor] = {}
    stats: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    say("OSEM 4 x 7")
    images["OSEM"] = reconstruct_classical(scan, "osem", num_iterations=4, num_subsets=7, postfilter_fwhm_mm=4.0)
    stats["OSEM"] = {"seconds": time.perf_counter() - t0}
    if net is not None:
        t0 = time.perf_counter()
        say("network")
        images["network"] = net(scan)
        stats["network"] = {"seconds": time.perf_counter() - t0}
    # the object: voxels above 20 % of OSEM's 99th percentile
    osem = images["OSEM"]
    body = osem > 0.2 * float(torch.quantile(osem.flatten(), 0.99))
    for name, img in images.items():
        stats[name].update(mean_bqml=float(img[body].mean()), max_bqml=float(img.max()))
        save_nifti(out / f"{name.lower()}.nii.gz", img, scan.image, units="Bq/mL")
    _images_png(out / "real_images.png", list(images.items()))
    prompts_in = report.prompts_kept
    lines = [
        "# Real mMR data through pet_dl",
        "",
        f"Input: {Path(listmode).name}, frame {report.frame_start_s:g} s + {report.duration_s:g} s;"
        f" normalisation {Path(norm).name if norm else 'none'};"
        f" mu-map {Path(mu_map).name if mu_map else 'none'}.",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| prompts in the frame | {report.prompts:,} |",
        f"| prompts in the 2D sinogram ({NUM_RADIAL} radial bins, {126} views) | {prompts_in:,} |",
        f"| delayeds | {report.delayeds:,} |",
        f"| randoms fraction (estimated randoms / prompts in the sinogram) | {100 * float(scan.additive.sum()) / max(prompts_in, 1):.1f} % |",
        "| scatter fraction | not estimated (no scatter model for measured data yet) |",
        f"| calibration (counts per Bq/mL x mm, one span-1 LOR) | {scan.calibration:.4g} |",
        "",
        "| image | mean in the object (Bq/mL) | max (Bq/mL) | seconds |",
        "|---|---|---|---|",
    ]
    for name, st in stats.items():
        lines.append(f"| {name} | {st['mean_bqml']:.4g} | {st['max_bqml']:.4g} | {st['seconds']:.1f} |")
    lines += ["", "Object: voxels above 20 % of the OSEM image's 99th percentile.", ""]
    lines += [f"- {n}" for n in notes]
    with atomic_path(out / "report.md") as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    say(f"wrote {out}")
    return {
        "prompts": report.prompts, "delayeds": report.delayeds, "duration_s": report.duration_s,
        "randoms_fraction": float(scan.additive.sum()) / max(prompts_in, 1), "images": stats,
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m pet_dl.demo_real --data DIR --out DIR``."""
    p = argparse.ArgumentParser(prog="python -m pet_dl.demo_real", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True,
                   help="folder with small_listmode_file.l (+ header) and norm.n(.hdr)")
    p.add_argument("--out", type=Path, default=Path("demo_real_out"), help="output folder")
    p.add_argument("--mu-map", type=Path, help="mu-map of the same object (none by default)")
    p.add_argument("--no-network", action="store_true", help="OSEM only")
    args = p.parse_args(argv)
    listmode = args.data / "small_listmode_file.l"
    norm = args.data / "norm.n.hdr"
    try:
        if not listmode.is_file():
            raise FileNotFoundError(f"{listmode}: no such file")
        result = run_demo_real(listmode, args.out, norm=norm if norm.is_file() else None,
                               mu_map=args.mu_map, network=False if args.no_network else None,
                               progress=True)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((args.out / "report.md").read_text(), end="")
    return 0 if result else 2


if __name__ == "__main__":
    raise SystemExit(main())
