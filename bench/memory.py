"""Peak memory of 3D mMR span-11 OSEM setup and of simulating a 3D mMR scan (CPU).

    python bench/memory.py setup --grid native      # OSEM setup, 344 x 344 x 127
    python bench/memory.py simulate --grid small    # simulate_scan, 128 x 128 x 32
    python bench/memory.py build                    # model + 21 subsets, no projection
    PYTHONPATH=/path/to/older/checkout python bench/memory.py ...   # the same, older code

``setup``: the full 3D mMR span-11 sinogram (837 x 252 x 344 = 72.6 M bins); attenuation
of a 200 mm water cylinder (one forward projection), synthetic Poisson counts and a flat
background, ``model.subsets(21)``, the 21 subset sensitivity images through
``OrderedSubsets.of_scan`` as ``osem()`` builds them: with ``--cache DIR`` in that
sensitivity cache folder, without it as ``osem(..., sensitivity_cache=None)`` does (above
``LAZY_SENSITIVITY_BYTES``, 256 MiB, on disk in a temporary folder that ``of_scan`` makes
and removes; ``--lazy-bytes N`` sets that threshold, e.g. 0 to put a small grid's images on
disk); ``--in-memory``: all in memory (``lazy=False``). Then one OSEM sub-iteration with
subset 0's image (``subsets.sensitivities[0]``); with ``--sensitivities N`` only the first
N subsets' images, by ``m.sensitivity()``. ``simulate``:
``pet_dl.simulate.simulate_scan`` of a uniform water cylinder. ``build``: the projector,
a model with sinogram-sized multiplicative (ones) and additive terms, and its 21 subset
models: what is held before the first projection. Prints one markdown row:
peak resident set of the process (``ru_maxrss``: torch's allocator is invisible to
tracemalloc), wall and CPU seconds of each stage. Uses only calls that older versions
of pet_dl also have, so the same script measures before and after a change.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

GRIDS = {"native": ((344, 344, 127), (2.08626, 2.08626, 2.03125)), "small": ((128, 128, 32), (4.0, 4.0, 4.0))}


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Clock:
    """Wall and CPU seconds per named stage."""

    def __init__(self) -> None:
        self.stages: list[str] = []
        self._t = (time.perf_counter(), time.process_time())

    def lap(self, name: str) -> None:
        now = (time.perf_counter(), time.process_time())
        self.stages.append(f"{name} {now[0] - self._t[0]:.0f} s ({now[1] - self._t[1]:.0f} s CPU)")
        self._t = now
        # progress on stderr: a long run that is stopped still reports its finished stages
        print(f"{self.stages[-1]}; peak so far {_peak_mib():.0f} MB", file=sys.stderr, flush=True)


def _cylinder(image) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    centres = [torch.as_tensor(image.voxel_centers(k), dtype=torch.float32) for k in range(3)]
    r2 = centres[0][:, None, None] ** 2 + centres[1][None, :, None] ** 2
    inside = (r2 <= 100.0**2) & (centres[2].abs()[None, None, :] <= 120.0)
    return (5000.0 * inside).float(), (0.0096 * inside).float()


def run_setup(image, sensitivities: int | None, subsets: int, cache: str | None,  # noqa: ANN001
              in_memory: bool = False) -> Clock:
    from pet_dl.forward_model import PETForwardModel, SinogramProjector, attenuation_factors
    from pet_dl.geometry import SinogramGeometry, get_scanner
    from pet_dl.recon.em import OrderedSubsets, em_update

    clock = Clock()
    sino = SinogramGeometry(get_scanner("mmr"), num_radial=344, span=11, max_ring_difference=60)
    _, mu = _cylinder(image)
    projector = SinogramProjector(sino, image)
    mult = attenuation_factors(mu, sino, image)
    clock.lap("attenuation")
    additive = torch.full(sino.shape, 0.5)
    y = torch.poisson(torch.full(sino.shape, 5.0), generator=torch.Generator().manual_seed(0))
    model = PETForwardModel(projector, mult, additive, calibration=1e-3)
    models = model.subsets(subsets)
    clock.lap("subset models")
    x = torch.ones(image.shape)
    if sensitivities is not None:  # only some subsets' images, held by the subset models
        sens = [m.sensitivity() for m in models[:sensitivities]]
        clock.lap(f"{sensitivities} sensitivities")
        x = em_update(x, models[0], model.subset_data(y, 0, subsets), sens[0])
    else:  # as osem() does: all of them (in memory with --in-memory)
        extra = {"lazy": False} if in_memory else {}  # older code: no lazy argument
        ordered = OrderedSubsets.of_scan(model, y, subsets, cache_dir=cache, **extra)
        where = "" if cache is not None else " no cache folder"
        clock.lap(f"{subsets} sensitivities ({type(ordered.sensitivities).__name__}{where})")
        x = em_update(x, ordered.models[0], ordered.data[0], ordered.sensitivities[0])
        if hasattr(ordered, "close"):
            ordered.close()
    clock.lap("1 sub-iteration")
    return clock


def run_build(subsets: int) -> Clock:
    """What is in memory before the first projection: the 3D projector and a forward
    model with sinogram-sized terms (ones, no projection needed), and its subset models."""
    from pet_dl.forward_model import PETForwardModel, SinogramProjector
    from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner

    clock = Clock()
    sino = SinogramGeometry(get_scanner("mmr"), num_radial=344, span=11, max_ring_difference=60)
    shape, voxel = GRIDS["native"]
    projector = SinogramProjector(sino, ImageGeometry.centered(shape, voxel))
    model = PETForwardModel(projector, torch.ones(sino.shape), torch.full(sino.shape, 0.5), calibration=1e-3)
    clock.lap("projector + model")
    model.subsets(subsets)
    clock.lap(f"{subsets} subset models")
    return clock


def run_simulate(image) -> Clock:  # noqa: ANN001
    from pet_dl.geometry import SinogramGeometry, get_scanner
    from pet_dl.simulate import simulate_scan

    clock = Clock()
    sino = SinogramGeometry(get_scanner("mmr"), num_radial=344, span=11, max_ring_difference=60)
    activity, mu = _cylinder(image)
    scan = simulate_scan(activity, mu, sino, image, duration_s=600.0)
    clock.lap("simulate_scan")
    assert scan.prompts.shape == sino.shape
    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=["setup", "simulate", "build"])
    parser.add_argument("--grid", choices=sorted(GRIDS), default="native")
    parser.add_argument("--subsets", type=int, default=21)
    parser.add_argument("--sensitivities", type=int, default=None,
                        help="only the first N subsets' sensitivities, by m.sensitivity() (default: all, as osem does)")
    parser.add_argument("--cache", default=None,
                        help="sensitivity cache folder (default: none, as osem's sensitivity_cache=None)")
    parser.add_argument("--in-memory", action="store_true", help="all sensitivities in memory (lazy=False)")
    parser.add_argument("--lazy-bytes", type=int, default=None,
                        help="set pet_dl.recon.em.LAZY_SENSITIVITY_BYTES (default: the library's)")
    parser.add_argument("--label", default="", help="first column (e.g. before / after)")
    args = parser.parse_args()
    from pet_dl.geometry import ImageGeometry

    shape, voxel = GRIDS[args.grid]
    image = ImageGeometry.centered(shape, voxel)
    if args.case == "setup":
        if args.lazy_bytes is not None:
            from pet_dl.recon import em

            em.LAZY_SENSITIVITY_BYTES = args.lazy_bytes
        clock = run_setup(image, args.sensitivities, args.subsets, args.cache, args.in_memory)
    elif args.case == "build":
        clock = run_build(args.subsets)
    else:
        clock = run_simulate(image)
    import pet_dl

    where = os.path.dirname(os.path.dirname(pet_dl.__file__))
    print(f"| {args.label} | {args.case} | {'x'.join(map(str, shape))} | {_peak_mib():.0f} | "
          f"{'; '.join(clock.stages)} | {where} |")


if __name__ == "__main__":
    main()
