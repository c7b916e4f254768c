"""The demo job (``make demo``, ``python -m pet_dl demo --out DIR``) as a library function.

A held-out 2D brain is simulated on the Siemens mMR (one direct plane) at full dose and
at 1/20 dose (binomial thinning of the same acquisition), reconstructed with OSEM and,
when the shipped network and :func:`pet_dl.inference.reconstruct_with_network` are installed, with the
network. The brain is a slice of BrainWeb subject 04, a test subject the shipped model was
never trained on, with two hot lesions, when the BrainWeb files are found
(``PET_DL_BRAINWEB`` or ``PET_DL_TEST_DATA``); else the synthetic ``brain`` phantom, with a
note saying so. The geometry and simulation settings are those of the shipped model's
training data (``data/brainweb2d.yaml``), so the network applies as is.

Outputs in the folder: the two scan files, one NIfTI per image (Bq/mL), the measured
sinograms as a picture (``sinograms.png``), a side-by-side PNG of the images
(``comparison.png``) and a metrics table (markdown and CSV: PSNR, SSIM, NRMSE against the
truth).
"""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

#: Seed of the demo phantom: the first seed of brainweb2d's test split (never trained on).
DEMO_SEED = 200000
#: The demo's BrainWeb subject: a test subject of data/brainweb2d.yaml.
DEMO_SUBJECT = "04"


@dataclass(frozen=True)
class DemoSettings:
    """Geometry and simulation of the demo (defaults: the shipped model's training data)."""

    scanner: str = "mmr"
    num_radial: int = 128
    view_mashing: int = 2
    image_shape: tuple[int, int, int] = (96, 96, 1)
    voxel_size_mm: float = 2.6
    duration_s: float = 600.0
    scatter_fraction: float = 0.3
    randoms_fraction: float = 0.2
    psf_fwhm_mm: float = 4.5
    crystal_efficiency_sigma: float = 0.05
    dose_fraction: float = 0.05
    num_iterations: int = 4
    num_subsets: int = 7
    postfilter_fwhm_mm: float = 4.0
    seed: int = DEMO_SEED
    phantom: str = "auto"  # "brainweb" (subject DEMO_SUBJECT), "brain" (synthetic) or "auto"


@dataclass
class DemoResult:
    """What the demo wrote and measured.

    Attributes:
        out_dir: the output folder.
        files: every file written.
        rows: one dict per reconstruction: ``method``, ``dose`` (fraction), ``psnr_db``,
            ``ssim``, ``nrmse`` (L2-normalised), ``nrmse_range``, ``seconds``.
        images: name -> ``(nx, ny, nz)`` image, Bq/mL (``truth`` included).
        notes: remarks (for example why the network column is missing).
    """

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    images: dict[str, torch.Tensor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _demo_phantom(s: DemoSettings, image: Any, generator: torch.Generator, notes: list[str]) -> Any:
    """The demo's phantom: a BrainWeb test subject with two lesions, or the synthetic brain.

    ``s.phantom="auto"`` takes BrainWeb when its files are found and says in ``notes`` when
    they are not; ``"brainweb"`` requires them (ValueError naming the variable).
    """
    from pet_dl.phantoms import add_lesions, make_phantom
    from pet_dl.phantoms.brainweb import brainweb_dir, brainweb_phantom

    if s.phantom not in ("auto", "brainweb", "brain"):
        raise ValueError(f"phantom must be 'auto', 'brainweb' or 'brain', got {s.phantom!r}")
    if s.phantom != "brain":
        try:
            brainweb_dir()
        except ValueError as err:
            if s.phantom == "brainweb":
                raise
            notes.append(f"synthetic brain phantom shown ({err})")
        else:
            phantom = brainweb_phantom(image, generator, subject=DEMO_SUBJECT, slice_position=0.55)
            notes.append(f"BrainWeb subject {DEMO_SUBJECT}, never trained on, with two hot lesions")
            return add_lesions(phantom, 2, (10.0, 16.0), 3.0, generator)
    return make_phantom("brain", image, generator)


def _network() -> tuple[Callable[..., torch.Tensor] | None, str]:
    """``(reconstruct_with_network, "")`` when the shipped network is installed, else ``(None, why)``."""
    try:
        from pet_dl.inference import reconstruct_with_network, shipped_checkpoint
    except ImportError as exc:
        return None, f"network column skipped: pet_dl.inference is not available ({exc})"
    try:
        shipped_checkpoint()
    except Exception as exc:  # CheckpointError: not installed
        return None, f"network column skipped: {exc}"
    return reconstruct_with_network, ""


def _dose_label(fraction: float) -> str:
    return "full" if fraction == 1.0 else f"1/{round(1 / fraction):d}"


def _png(path: Path, panels: list[tuple[str, torch.Tensor]], vmax: float) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from pet_dl.io.atomic import atomic_path

    fig = Figure(figsize=(2.6 * len(panels), 3.0), dpi=100)
    for k, (title, image) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        plane = image[:, :, image.shape[2] // 2].T.numpy()  # rows = y, columns = x
        ax.imshow(plane, cmap="gray_r", vmin=0.0, vmax=vmax, origin="lower")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def sinogram_png(path: Path, panels: list[tuple[str, torch.Tensor]]) -> None:
    """Each sinogram's central plane as views x radial bins (counts per bin), titled with its total.

    Args:
        panels: ``(title, sinogram (planes, views, radial))`` per panel, counts.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from pet_dl.io.atomic import atomic_path

    fig = Figure(figsize=(3.7 * len(panels), 3.4), dpi=100)
    for k, (title, sino) in enumerate(panels):
        plane = sino[sino.shape[0] // 2].numpy()  # (views, radial)
        ax = fig.add_subplot(1, len(panels), k + 1)
        shown = ax.imshow(plane, cmap="magma", aspect="auto", interpolation="nearest")
        ax.set_title(f"{title}: {float(sino.sum()):,.0f} counts", fontsize=9)
        ax.set_xlabel("radial bin")
        ax.set_ylabel("view")
        fig.colorbar(shown, ax=ax, label="counts per bin")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _tables(rows: list[dict[str, Any]], settings: DemoSettings, notes: list[str]) -> tuple[str, str]:
    keys = ["method", "dose", "psnr_db", "ssim", "nrmse", "nrmse_range", "seconds"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in keys})
    lines = [
        "# pet_dl demo: 2D brain on the mMR, full dose vs 1/"
        f"{round(1 / settings.dose_fraction)} dose",
        "",
        f"Phantom seed {settings.seed}; {settings.image_shape[0]}x{settings.image_shape[1]} "
        f"voxels of {settings.voxel_size_mm} mm; OSEM {settings.num_iterations} iterations x "
        f"{settings.num_subsets} subsets, post-filter {settings.postfilter_fwhm_mm} mm FWHM.",
        "Metrics against the true activity over the whole image: PSNR (peak = max of the "
        "truth), SSIM (MONAI, 11x11 Gaussian window), NRMSE = ||x - truth|| / ||truth||, "
        "NRMSE-range = RMSE / (max - min of the truth).",
        "",
        "| method | dose | PSNR (dB) | SSIM | NRMSE | NRMSE-range | time (s) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['dose']} | {r['psnr_db']:.2f} | {r['ssim']:.4f} | "
            f"{r['nrmse']:.4f} | {r['nrmse_range']:.4f} | {r['seconds']:.2f} |"
        )
    lines += [""] + [f"Note: {n}" for n in notes]
    return "\n".join(lines).rstrip() + "\n", buf.getvalue()


def run_demo(
    out_dir: str | Path,
    settings: DemoSettings | None = None,
    network: bool | None = None,
    progress: bool = False,
) -> DemoResult:
    """Simulate, reconstruct, and write the demo's images, PNG and metrics table.

    Args:
        out_dir: output folder (created if missing).
        settings: geometry / simulation / OSEM settings (default :class:`DemoSettings`).
        network: add the shipped network's reconstructions; ``None``: when installed;
            ``True``: required (error if missing); ``False``: never.
        progress: progress messages on stderr.

    Returns:
        A :class:`DemoResult` (files, metric rows, images).
    """
    import time

    from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
    from pet_dl.io.atomic import atomic_write_text
    from pet_dl.io.nifti import save_nifti
    from pet_dl.io.scanfile import write_scan
    from pet_dl.metrics import nrmse, nrmse_range, psnr, ssim
    from pet_dl.recon import reconstruct_classical
    from pet_dl.scan import AcquisitionMetadata
    from pet_dl.simulate import simulate_scan, thin_scan

    s = settings or DemoSettings()
    if not 0 < s.dose_fraction < 1:
        raise ValueError(f"dose_fraction must be in (0, 1), got {s.dose_fraction}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(out_dir=out)

    def say(msg: str) -> None:
        if progress:
            print(f"[demo] {msg}", file=sys.stderr, flush=True)

    reconstruct_net, why = (None, "network column disabled") if network is False else _network()
    if reconstruct_net is None:
        if network:
            raise ValueError(why)
        result.notes.append(why)

    image = ImageGeometry.centered(s.image_shape, s.voxel_size_mm)
    sinogram = SinogramGeometry.two_d(
        get_scanner(s.scanner), num_radial=s.num_radial, view_mashing=s.view_mashing
    )
    generator = torch.Generator().manual_seed(s.seed)
    phantom = _demo_phantom(s, image, generator, result.notes)
    say(f"simulating {s.scanner} 2D scan {sinogram.shape} of a {image.shape} {phantom.name} phantom")
    full = simulate_scan(
        phantom.activity, phantom.mu, sinogram, image, duration_s=s.duration_s,
        scatter_fraction=s.scatter_fraction, randoms_fraction=s.randoms_fraction,
        psf_fwhm_mm=s.psf_fwhm_mm, crystal_efficiency_sigma=s.crystal_efficiency_sigma,
        generator=generator,
        metadata=AcquisitionMetadata(duration_s=s.duration_s, phantom=phantom.name, seed=s.seed),
    )
    low = thin_scan(full, s.dose_fraction, generator, kind="dose")
    truth = phantom.activity.float()
    result.images["truth"] = truth
    tag = f"dose{round(1 / s.dose_fraction)}"
    for name, scan in (("full", full), (tag, low)):
        path = out / f"scan_{name}.h5"
        write_scan(path, scan, truth=phantom)
        result.files.append(path)
    path = out / "truth.nii.gz"
    save_nifti(path, truth, image)
    result.files.append(path)
    path = out / "sinograms.png"
    sinogram_png(path, [("full dose", full.prompts), (f"{_dose_label(s.dose_fraction)} dose", low.prompts)])
    result.files.append(path)

    methods: list[tuple[str, Callable[[Any], torch.Tensor]]] = [
        ("OSEM", lambda sc: reconstruct_classical(
            sc, "osem", num_iterations=s.num_iterations, num_subsets=s.num_subsets,
            postfilter_fwhm_mm=s.postfilter_fwhm_mm,
        )),
    ]
    if reconstruct_net is not None:
        methods.append(("network", lambda sc: reconstruct_net(sc, None, device="cpu")))
    panels = [("truth", truth)]
    for method, fn in methods:
        for name, scan in (("full", full), (tag, low)):
            say(f"{method} on the {name} scan ({float(scan.prompts.sum()):.3g} counts)")
            start = time.perf_counter()
            try:
                x = fn(scan).float()
            except Exception as exc:
                if method == "OSEM" or network:
                    raise
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                result.notes.append(f"network column skipped: {first}")
                break
            seconds = time.perf_counter() - start
            key = f"{method.lower()}_{name}"
            result.images[key] = x
            path = out / f"{key}.nii.gz"
            save_nifti(path, x, image)
            result.files.append(path)
            dose = _dose_label(scan.metadata.dose_fraction)
            panels.append((f"{method} {dose} dose", x))
            result.rows.append({
                "method": method, "dose": dose,
                "psnr_db": float(psnr(x, truth)), "ssim": float(ssim(x, truth)),
                "nrmse": float(nrmse(x, truth)), "nrmse_range": float(nrmse_range(x, truth)),
                "seconds": seconds,
            })
    path = out / "comparison.png"
    _png(path, panels, vmax=float(truth.max()))
    result.files.append(path)
    markdown, table_csv = _tables(result.rows, s, result.notes)
    for name, text in (("metrics.md", markdown), ("metrics.csv", table_csv)):
        atomic_write_text(out / name, text)
        result.files.append(out / name)
    if any(not math.isfinite(r["nrmse"]) for r in result.rows):
        raise ValueError("a reconstruction produced non-finite values")
    return result
