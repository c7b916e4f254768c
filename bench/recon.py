"""Benchmark: OSEM time per full iteration and peak memory (2D and 3D Siemens mMR).

    python bench/recon.py                      # CPU: 2D full; 3D span 11 extrapolated
    python bench/recon.py --device cuda        # GPU: 2D and 3D, full iterations
    python bench/recon.py --skip-3d

Cases: (a) 2D mMR, one direct plane (1 x 252 x 344 sinogram) into the vendor grid
344 x 344 x 1 of 2.086 mm; (b) 3D mMR span 11, maximum ring difference 60
(837 x 252 x 344) into 344 x 344 x 127 of 2.086 x 2.086 x 2.031 mm. Both with attenuation
of a 200 mm water cylinder and a flat additive background, 21 subsets (12 views each).
On the CPU, case (b) times sub-iterations of a few subsets and extrapolates to all 21
(marked "extrapolated"); on CUDA it runs full iterations. The setup column is the
one-time cost of the subset sensitivity images. Peak memory: CUDA
``torch.cuda.max_memory_allocated``; CPU the process peak resident set (``ru_maxrss``,
which includes Python, torch and the data; tracemalloc does not see torch's allocator).
Prints a markdown table.
"""

from __future__ import annotations

import os

# Before torch is imported: torch's OpenMP threads otherwise spin against numba's.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import torch  # noqa: E402

from pet_dl.forward_model import PETForwardModel, SinogramProjector, attenuation_factors  # noqa: E402
from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner  # noqa: E402
from pet_dl.recon import osem  # noqa: E402
from pet_dl.recon.em import em_update, subset_models_and_sensitivities  # noqa: E402


@dataclass
class Row:
    case: str
    device: str
    sinogram: tuple[int, ...]
    image: tuple[int, ...]
    subsets: int
    seconds_per_iteration: float
    setup_seconds: float
    peak_mib: float
    note: str = ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _problem(sinogram: SinogramGeometry, image: ImageGeometry, device: torch.device):
    """A forward model with a water cylinder's attenuation and noisy data of a disk."""
    centres = [torch.as_tensor(image.voxel_centers(k), dtype=torch.float32) for k in range(3)]
    r2 = centres[0][:, None, None] ** 2 + centres[1][None, :, None] ** 2
    inside = (r2 <= 100.0**2) & (centres[2].abs()[None, None, :] <= 120.0)
    mu = (0.0096 * inside).float()
    projector = SinogramProjector(sinogram, image).to(device)
    mult = attenuation_factors(mu.to(device), sinogram, image)
    activity = (5000.0 * inside).float().to(device)
    trues = PETForwardModel(projector, mult, None, calibration=1e-3)(activity)
    additive = torch.full_like(trues, 0.2 * float(trues.mean()))
    model = PETForwardModel(projector, mult, additive, calibration=1e-3)
    y = torch.poisson(trues + additive, generator=torch.Generator(device=device).manual_seed(0))
    return model, y


def bench_full(name, sinogram, image, device, subsets, iterations) -> Row:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model, y = _problem(sinogram, image, device)
    _sync(device)
    start = time.perf_counter()
    subset_models_and_sensitivities(model, subsets)  # cached on the model
    _sync(device)
    setup = time.perf_counter() - start
    x = osem(model, y, 1, subsets)  # warm-up (kernel compilation)
    _sync(device)
    start = time.perf_counter()
    x = osem(model, y, iterations, subsets, x0=x)
    _sync(device)
    per_iteration = (time.perf_counter() - start) / iterations
    return Row(name, device.type, tuple(sinogram.shape), tuple(image.shape), subsets,
               per_iteration, setup, _peak_mib(device))


def bench_extrapolated(name, sinogram, image, device, subsets, measured) -> Row:
    """Time ``measured`` sub-iterations of a ``subsets`` OSEM and scale to a full iteration.

    The data are synthetic (flat Poisson counts, no attenuation): computing attenuation
    factors or noiseless data needs projections of the whole sinogram, which is the cost
    this extrapolation avoids. The arithmetic per sub-iteration is the same.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    projector = SinogramProjector(sinogram, image).to(device)
    additive = torch.full(sinogram.shape, 0.5, device=device)
    model = PETForwardModel(projector, None, additive, calibration=1e-3)
    y = torch.poisson(torch.full(sinogram.shape, 5.0, device=device),
                      generator=torch.Generator(device=device).manual_seed(0))
    subset_models = model.subsets(subsets)
    x = torch.ones(image.shape, device=device)
    setup = 0.0
    update = 0.0
    for k in range(measured):
        start = time.perf_counter()
        sens = subset_models[k].sensitivity()
        _sync(device)
        setup += time.perf_counter() - start
        y_k = model.subset_data(y, k, subsets)
        start = time.perf_counter()
        x = em_update(x, subset_models[k], y_k, sens)
        _sync(device)
        update += time.perf_counter() - start
    scale = subsets / measured
    return Row(name, device.type, tuple(sinogram.shape), tuple(image.shape), subsets,
               update * scale, setup * scale, _peak_mib(device),
               f"extrapolated from {measured} of {subsets} sub-iterations")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--subsets", type=int, default=21)
    parser.add_argument("--iterations", type=int, default=2, help="timed full iterations")
    parser.add_argument("--measured-subsets", type=int, default=1,
                        help="sub-iterations timed for the CPU 3D extrapolation")
    parser.add_argument("--skip-3d", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")

    mmr = get_scanner("mmr")
    vox = 2.08626
    rows = []
    sino2d = SinogramGeometry.two_d(mmr)
    image2d = ImageGeometry.centered((344, 344, 1), (vox, vox, vox))
    rows.append(bench_full("2D mMR", sino2d, image2d, device, args.subsets, args.iterations))
    if not args.skip_3d:
        sino3d = SinogramGeometry(mmr, num_radial=344, span=11, max_ring_difference=60)
        image3d = ImageGeometry.centered((344, 344, 127), (vox, vox, 2.03125))
        if device.type == "cuda":
            rows.append(bench_full("3D mMR span 11", sino3d, image3d, device, args.subsets,
                                   args.iterations))
        else:
            rows.append(bench_extrapolated("3D mMR span 11", sino3d, image3d, device,
                                           args.subsets, args.measured_subsets))

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} "
          f"torch threads, torch {torch.__version__}, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY')}, load average {os.getloadavg()[0]:.1f} {gpu}")
    mem = "peak GPU memory (MiB)" if device.type == "cuda" else "peak RSS (MiB)"
    print(f"| case | device | sinogram | image | subsets | s / iteration | setup (s) | {mem} | note |")
    print("|---|---|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r.case} | {r.device} | {'x'.join(map(str, r.sinogram))} | "
              f"{'x'.join(map(str, r.image))} | {r.subsets} | {r.seconds_per_iteration:.3f} | "
              f"{r.setup_seconds:.3f} | {r.peak_mib:.0f} | {r.note} |")


if __name__ == "__main__":
    main()
