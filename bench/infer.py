"""Inference benchmark: latency and peak memory of ``reconstruct_with_network`` (and one TorchServe request).

    python bench/infer.py                      # 2D mMR slice on CPU
    python bench/infer.py --serve              # + one TorchServe request (needs java, serve extra)
    python bench/infer.py --device cuda --3d   # 3D mMR (span 11) on a GPU
    python bench/infer.py --startup [--before DIR]   # infer.py start-up split (2D, CPU)
    python bench/infer.py --rebinned [--rings 64] [--check-cost]   # 3D mMR span 11 through the 2D model
    python bench/infer.py --wide [--repeats 5]      # 2D objects wider than the model's grid
    python bench/infer.py --osem [--repeats 5]      # infer.py --osem: OSEM for reading beside the network

Uses the shipped model when it exists and the geometry fits, otherwise an untrained
network of the same architecture (latency does not depend on the weights). Prints a
Markdown table row per case.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# the shipped model's architecture (pet_dl/assets/pet_dl_2d.safetensors: 3 unrolled
# iterations, a UNet 32-64-128 each averaged over left-right flips, 4 x 7 OSEM start),
# untrained, on the scan's own grid
CONFIG_2D = {
    "name": "unrolled_em", "spatial_dims": 2, "num_iterations": 3, "channels": [32, 64, 128],
    "strides": [2, 2], "num_res_units": 2, "init_iterations": 4, "init_subsets": 7,
    "share_weights": False, "flip_ensemble": [0],
}
CONFIG_3D = {
    "name": "unrolled_em",
    "spatial_dims": 3,
    "num_iterations": 4,
    "init_iterations": 4,
    "channels": [8, 16, 32],
}


def make_scan(three_d: bool, generator: torch.Generator, device: str = "cpu"):  # noqa: ANN201
    """An mMR scan (2D: one direct plane; 3D: span 11) of a uniform cylinder, Poisson counts."""
    from dataclasses import replace

    from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
    from pet_dl.scan import AcquisitionMetadata, Scan

    scanner = get_scanner("mmr")
    if three_d:
        sino = SinogramGeometry(scanner, num_radial=344, span=11, max_ring_difference=60)
        image = ImageGeometry.centered((172, 172, 127), (4.17, 4.17, 2.03125))
    else:
        sino = SinogramGeometry.two_d(scanner)
        image = ImageGeometry.centered((172, 172, 1), (2.08, 2.08, 2.03125))
    nx, ny, nz = image.shape
    x = torch.linspace(-1, 1, nx)
    disk = ((x[:, None] ** 2 + x[None, :] ** 2) < 0.5).float()
    activity = disk[:, :, None].expand(nx, ny, nz).contiguous() * 5000.0
    base = Scan(
        sino,
        image,
        torch.zeros(sino.shape),
        torch.ones(sino.shape),
        torch.zeros(sino.shape),
        1.0,
        0.0,
        AcquisitionMetadata(duration_s=600.0),
    )
    with torch.no_grad():  # simulate on the benchmark device (3D on CPU would take hours)
        ybar = base.forward_model(device)(activity.to(device)).cpu()
    counts = 5e6 if not three_d else 2e8
    calibration = counts / float(ybar.sum())
    additive = torch.full(sino.shape, 0.1 * counts / ybar.numel())
    prompts = torch.poisson(ybar * calibration + additive, generator=generator)
    return replace(base, prompts=prompts, additive=additive, calibration=calibration)


def untrained_checkpoint(scan, out: Path, config: dict) -> Path:  # noqa: ANN001
    """An untrained network of ``config`` on ``scan``'s geometry, saved as ``out``."""
    from pet_dl.io.checkpoint import save_checkpoint
    from pet_dl.models import build_model

    torch.manual_seed(0)
    meta = {"sinogram": scan.sinogram.to_dict(), "image": scan.image.to_dict()}
    return save_checkpoint(out, build_model(config), config, meta)


def make_checkpoint(scan, out: Path, three_d: bool) -> tuple[Path, str]:  # noqa: ANN001
    """The shipped model when its grid fits ``scan``, else an untrained one of its architecture."""
    from pet_dl.inference import shipped_checkpoint
    from pet_dl.io.checkpoint import CheckpointError, read_checkpoint_header

    if not three_d:
        try:
            path = shipped_checkpoint()
            _, meta = read_checkpoint_header(path)
            if meta.get("image") == scan.image.to_dict() or meta.get("image") is None:
                return path, "shipped"
        except CheckpointError:
            pass
    return untrained_checkpoint(scan, out / "bench.safetensors", CONFIG_3D if three_d else CONFIG_2D), "untrained"


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if platform.system() != "Darwin" else kb / 2**20


def bench_reconstruct(
    scan, checkpoint: Path, device: str, repeats: int
) -> tuple[float, float, float]:  # noqa: ANN001
    from pet_dl.inference import reconstruct_with_network
    from pet_dl.io.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint, map_location=device)
    reconstruct_with_network(scan, loaded, device=device)  # warm-up (numba / CUDA kernels, caches)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        reconstruct_with_network(scan, loaded, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
    return sorted(times)[len(times) // 2], peak_rss_mb(), gpu_mb


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def bench_serve(scan_file: Path, checkpoint: Path, work: Path, repeats: int) -> float:
    """Median latency of one POST /predictions request to a local TorchServe, s."""
    from pet_dl.serving.healthcheck import model_ready

    bindir = Path(sys.executable).parent
    env = dict(
        os.environ,
        PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}",
        TMPDIR=str(work),
        LOG_LOCATION=str(work / "logs"),
        METRICS_LOCATION=str(work / "logs"),
    )
    subprocess.run(
        ["bash", str(ROOT / "scripts/build_mar.sh"), str(checkpoint), str(work / "store"), "bench"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    ports = _free_ports(3)
    config = (ROOT / "pet_dl/serving/config.properties").read_text()
    for default, port in zip((8080, 8081, 8082), ports):
        config = config.replace(f"127.0.0.1:{default}", f"127.0.0.1:{port}")
    (work / "config.properties").write_text(config)
    with open(work / "torchserve.out", "wb") as log:
        subprocess.run(
            [
                shutil.which("torchserve", path=env["PATH"]),
                "--start",
                "--ncs",
                "--ts-config",
                str(work / "config.properties"),
                "--model-store",
                str(work / "store"),
                "--models",
                "bench=bench.mar",
            ],
            cwd=work,
            env=env,
            stdout=log,
            stderr=log,
            check=True,
        )
    pid = int((work / ".model_server.pid").read_text().split()[0])
    try:
        deadline = time.monotonic() + 300
        while not model_ready(f"http://127.0.0.1:{ports[1]}", "bench", timeout_s=2):
            if time.monotonic() > deadline:
                raise RuntimeError("TorchServe did not become ready")
            time.sleep(1)
        body = scan_file.read_bytes()
        url = f"http://127.0.0.1:{ports[0]}/predictions/bench"
        times = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            with urllib.request.urlopen(
                urllib.request.Request(
                    url, data=body, headers={"Content-Type": "application/octet-stream"}
                ),
                timeout=600,
            ) as r:
                r.read()
            if i:  # the first request warms the worker up
                times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]
    finally:
        subprocess.run(
            [shutil.which("torchserve", path=env["PATH"]), "--stop"],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=90,
        )
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ----------------------------------------------------------------------------- start-up
# Run in a fresh interpreter inside a source tree (this one, or --before DIR: an older
# checkout): PREPARE writes a 2D scan of the shipped model's own geometry and a copy of the
# model whose metadata is that tree's geometry dict; SPLIT then times, from the first
# statement, what infer.py does: imports, model load, read + reconstruct + data check, write.
_PREPARE = """
import sys, torch
from pet_dl.geometry import ImageGeometry, SinogramGeometry
from pet_dl.inference import load_model
from pet_dl.io.checkpoint import save_checkpoint
from pet_dl.io.scanfile import write_scan
from pet_dl.simulate import simulate_scan
work = sys.argv[1]
loaded = load_model(None, torch.device("cpu"))
meta = dict(loaded.metadata)
sino = SinogramGeometry.from_dict(meta["sinogram"])
image = ImageGeometry.from_dict(meta["image"])
meta["sinogram"] = sino.to_dict()  # this tree's dict of the same geometry
save_checkpoint(work + "/model.safetensors", loaded.model, loaded.config, meta)
n = image.shape[0]
x = torch.linspace(-1, 1, n)
disk = ((x[:, None] ** 2 + x[None, :] ** 2) < 0.5).float()[..., None]
spot = (((x[:, None] - 0.3) ** 2 + x[None, :] ** 2) < 0.01).float()[..., None]
scan = simulate_scan(disk * 5000 + spot * 15000, disk * 0.0096, sino, image, duration_s=600.0,
                     psf_fwhm_mm=float(meta.get("psf_fwhm_mm", 4.5)))
write_scan(work + "/scan.h5", scan)
"""
_SPLIT = """
import time
w, c = [time.perf_counter()], [time.process_time()]
def mark():
    w.append(time.perf_counter()); c.append(time.process_time())
import json, sys
from pathlib import Path
import torch
mark()
import infer
from pet_dl.inference import load_model, reconstruct_and_check, resolve_device
from pet_dl.io.scanfile import read_scan
mark()
work = Path(sys.argv[1])
device = resolve_device("cpu")
getattr(infer, "_import_monai_networks", lambda: None)()  # what infer.py does, where it does it
loaded = load_model(work / "model.safetensors", device)
mark()
scan = read_scan(work / "scan.h5")
image, fit = reconstruct_and_check(scan, loaded, device=device)
mark()
out = work / "out"
out.mkdir(exist_ok=True)
infer._write_outputs(out, "scan", image, scan, ("nifti", "dicom"), "bench", fit.consistency)
mark()
print(json.dumps([[b - a for a, b in zip(w, w[1:])], [b - a for a, b in zip(c, c[1:])]]))
"""


def _checked(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    """Run ``cmd``; on failure raise with the last lines of its stderr."""
    out = subprocess.run(cmd, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if out.returncode:
        raise RuntimeError(f"{cmd[:3]} failed ({out.returncode}): {out.stderr[-2000:]}")
    return out


def _child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_startup(tree: Path, work: Path, repeats: int) -> dict[str, float]:
    """Medians over ``repeats`` fresh processes (after one warm-up run each) of infer.py's
    phases in ``tree``, and of ``python infer.py`` end to end (wall and CPU seconds)."""
    import json
    import statistics

    env = dict(os.environ, PYTHONPATH=str(tree), OMP_WAIT_POLICY="PASSIVE")
    py = sys.executable
    _checked([py, "-c", _PREPARE, str(work)], cwd=tree, env=env)
    cmd = [py, "infer.py", str(work / "scan.h5"), "--checkpoint", str(work / "model.safetensors"),
           "--out", str(work / "cli")]
    _checked(cmd, cwd=tree, env=env)  # warm-up: numba's cache, the file cache
    splits, walls, cpus = [], [], []
    for _ in range(repeats):
        out = _checked([py, "-c", _SPLIT, str(work)], cwd=tree, env=env)
        splits.append(json.loads(out.stdout.strip().splitlines()[-1]))
        cpu0, t0 = _child_cpu_s(), time.perf_counter()
        _checked(cmd, cwd=tree, env=env)
        walls.append(time.perf_counter() - t0)
        cpus.append(_child_cpu_s() - cpu0)
    row = {}
    for i, name in enumerate(PHASES):
        row[name] = (statistics.median(s[0][i] for s in splits), statistics.median(s[1][i] for s in splits))
    row["infer.py"] = (statistics.median(walls), statistics.median(cpus))
    return row


# the phases of _SPLIT, in order
PHASES = ("import torch", "other imports", "model load (MONAI)", "read + reconstruction + check", "writing")


def startup_main(before: Path | None, repeats: int) -> int:
    """Print the start-up split of this tree (and of ``before``) as a Markdown table."""
    trees = [("before", before)] if before is not None else []
    trees.append(("this tree", ROOT))
    rows = []
    for label, tree in trees:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append((label, bench_startup(tree.resolve(), Path(tmp), repeats)))
    names = list(rows[0][1])
    print(f"| tree | {' | '.join(n + ' wall / CPU (s)' for n in names)} |")
    print("|---" * (len(names) + 1) + "|")
    for label, row in rows:
        print(f"| {label} | {' | '.join(f'{row[n][0]:.2f} / {row[n][1]:.2f}' for n in names)} |")
    print(f"\n2D shipped-model scan on CPU ({os.cpu_count()} threads), medians of {repeats} fresh "
          f"processes after one warm-up; phases timed inside one process from its first "
          f"statement, infer.py end to end in another; load average {os.getloadavg()[0]:.1f}")
    return 0


# ----------------------------------------------------------------------------- 3D, rebinned
def rebinned_main(rings: int, native: bool, check_cost: bool = False) -> int:
    """A simulated mMR span-11 scan (``rings`` rings) through ``infer.py`` with the shipped 2D
    model: seconds of simulation (not part of inference), then infer.py end to end in a
    fresh process, with SSRB and the plane reconstructions timed on their own; with
    ``check_cost`` also, in this process side by side, the network alone against the
    network with the data check and its consistency map (``reconstruct_and_check``)."""
    from dataclasses import replace

    from pet_dl.geometry import ImageGeometry, SinogramGeometry
    from pet_dl.inference import load_model
    from pet_dl.io.checkpoint import save_checkpoint
    from pet_dl.io.scanfile import write_scan
    from pet_dl.rebin import ssrb
    from pet_dl.scan import AcquisitionMetadata, Scan
    from pet_dl.simulate import simulate_scan

    loaded = load_model(None, torch.device("cpu"))
    meta = dict(loaded.metadata)
    two_d = SinogramGeometry.from_dict(meta["sinogram"])
    meta["sinogram"] = two_d.to_dict()  # this version's dict of the same geometry
    scanner = replace(two_d.scanner, num_rings=rings)
    if native:  # the vendor's layout: 344 bins, 252 views
        sino = SinogramGeometry(scanner, num_radial=344, span=11)
    else:  # the model's transaxial layout, every ring
        sino = SinogramGeometry(scanner, num_radial=two_d.num_radial, span=11,
                                view_mashing=two_d.view_mashing)
    image = ImageGeometry.centered((96, 96, 2 * rings - 1), (2.6, 2.6, scanner.ring_spacing_mm / 2))
    nx, ny, nz = image.shape
    x = torch.linspace(-1, 1, nx)
    r2 = x[:, None] ** 2 + x[None, :] ** 2
    z = torch.linspace(-1, 1, nz)
    act = ((r2 < 0.5).float() * 8000.0)[..., None] * (1 + (z.abs() < 0.3).float())
    spot = (((x[:, None] - 0.3) ** 2 + x[None, :] ** 2) < 0.01).float()[..., None] * 20000.0
    act = act + spot * (z.abs() < 0.1).float()
    mu = ((r2 < 0.5).float() * 0.0096)[..., None].expand(nx, ny, nz).contiguous()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        scan = simulate_scan(act, mu, sino, image, duration_s=600.0, psf_fwhm_mm=4.5,
                             crystal_efficiency_sigma=0.05)
        write_scan(work / "scan.h5", scan)
        t_sim = time.perf_counter() - t0
        ckpt = save_checkpoint(work / "model.safetensors", loaded.model, loaded.config, meta)
        t0 = time.perf_counter()
        rebinned = ssrb(scan, two_d.num_radial, two_d.view_mashing)
        t_ssrb = time.perf_counter() - t0
        del rebinned, scan
        # SSRB's own cost on a whole native mMR sinogram (837 x 252 x 344; zeros: same work)
        full = SinogramGeometry(replace(scanner, num_rings=64), num_radial=344, span=11)
        zeros = torch.zeros(full.shape)
        big = Scan(full, image, zeros, zeros, zeros, 1.0, 0.0, AcquisitionMetadata(600.0))
        cpu0 = time.process_time()
        ssrb(big, two_d.num_radial, two_d.view_mashing)
        t_full = time.process_time() - cpu0
        del big, zeros
        cpu0, t0 = _child_cpu_s(), time.perf_counter()
        subprocess.run(
            [sys.executable, str(ROOT / "infer.py"), str(work / "scan.h5"), "--checkpoint", str(ckpt),
             "--out", str(work / "out")],
            check=True, env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"),
        )
        wall, cpu = time.perf_counter() - t0, _child_cpu_s() - cpu0
        if check_cost:  # in this process, side by side: the network alone, then with the check and map
            from pet_dl.inference import reconstruct_and_check, reconstruct_with_network
            from pet_dl.io.scanfile import read_scan

            scan = read_scan(work / "scan.h5")
            costs = {"network": [], "network + check + map": []}
            for _ in range(2):
                for name, run in (("network", reconstruct_with_network), ("network + check + map", reconstruct_and_check)):
                    t1 = time.perf_counter()
                    run(scan, loaded, device="cpu")
                    costs[name].append(time.perf_counter() - t1)
            print("| in-process, 2 runs in rotation | " + " | ".join(
                f"{name}: {min(t):.1f} s" for name, t in costs.items()) + " |\n")
    print("| scan | sinogram | image | simulate + write (s) | SSRB alone (s) | infer.py wall (s) "
          "| infer.py CPU (s) | peak RSS of infer.py (MB) | SSRB of a whole native mMR, CPU (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    print(f"| mMR {rings} rings span 11 | {tuple(sino.shape)} | {image.shape} | {t_sim:.0f} "
          f"| {t_ssrb:.1f} | {wall:.1f} | {cpu:.1f} | {rss:.0f} | {t_full:.1f} |")
    print(f"\nCPU ({os.cpu_count()} threads), load average {os.getloadavg()[0]:.1f}")
    return 0


def wide_main(repeats: int) -> int:
    """The shipped 2D model on native-layout mMR slices (252 x 344) of water discs: a 200 mm
    disc on the model's own 96 x 96 grid of 2.6 mm and on the import's default 718 mm grid
    (a first look finds it inside the model's bins: the model's layout), and discs of 300
    and 480 mm (grids grown around them; ``pet_dl.plane_inference.model_planes``). Timed
    side by side in this process, in rotation, medians of ``repeats``."""
    from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
    from pet_dl.inference import load_model, reconstruct_with_network
    from pet_dl.plane_inference import model_planes
    from pet_dl.simulate import simulate_scan

    loaded = load_model(None, torch.device("cpu"))
    sino = SinogramGeometry.two_d(get_scanner("mmr"))
    cases = [  # (scan grid, disc diameter mm)
        (ImageGeometry.centered((96, 96, 1), 2.6), 200.0),
        (ImageGeometry.centered((172, 172, 1), 4.1725), 200.0),
        (ImageGeometry.centered((128, 128, 1), 2.6), 300.0),
        (ImageGeometry.centered((192, 192, 1), 2.6), 480.0),
    ]
    scans = []
    for image, diameter in cases:
        x = torch.from_numpy(image.voxel_centers(0)).float()
        disc = ((x[:, None] ** 2 + x[None, :] ** 2) < (diameter / 2) ** 2).float()[..., None]
        scans.append(simulate_scan(disc * 6000.0, disc * 0.0096, sino, image, duration_s=600.0,
                                   psf_fwhm_mm=4.5, generator=torch.Generator().manual_seed(1)))
    for scan in scans:  # warm-up
        reconstruct_with_network(scan, loaded, device="cpu")
    times: list[list[float]] = [[] for _ in scans]
    for _ in range(repeats):
        for i, scan in enumerate(scans):
            t0 = time.perf_counter()
            reconstruct_with_network(scan, loaded, device="cpu")
            times[i].append(time.perf_counter() - t0)
    print("| water disc | scan grid | reconstructed on | radial bins | reconstruct (s, median) "
          "| ratio to the first row |")
    print("|---|---|---|---|---|---|")
    base = sorted(times[0])[repeats // 2]
    for (image, diameter), scan, t in zip(cases, scans, times):
        planes, grid = model_planes(scan, loaded.metadata)
        bins = planes.sinogram.num_radial
        med = sorted(t)[repeats // 2]
        side = image.shape[0] * image.voxel_size_mm[0]
        print(f"| {diameter:.0f} mm | {image.shape[0]} x {image.shape[1]} of {image.voxel_size_mm[0]:g} mm "
              f"({side:.0f} mm) | {grid.shape[0]} x {grid.shape[1]} | {bins} | {med:.2f} | {med / base:.2f} |")
    print(f"\nCPU ({os.cpu_count()} threads), torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    return 0


def osem_main(repeats: int) -> int:
    """``infer.py --osem``'s cost: the OSEM for reading (:func:`pet_dl.reading_osem.osem_for_reading`)
    beside the network with its data check (:func:`pet_dl.inference.reconstruct_and_check`),
    on 2D mMR slices of a 200 mm water disc: on the model's layout at full and 1/20 dose (20
    and 4 OSEM iterations) and on the native 252 x 344 layout at 1/20. Timed side by side in
    this process, in rotation, medians of ``repeats``."""
    from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
    from pet_dl.inference import load_model, reconstruct_and_check
    from pet_dl.reading_osem import osem_for_reading
    from pet_dl.simulate import simulate_scan, thin_scan

    loaded = load_model(None, torch.device("cpu"))
    model_sino = SinogramGeometry.from_dict(loaded.metadata["sinogram"])
    image = ImageGeometry.from_dict(loaded.metadata["image"])
    x = torch.from_numpy(image.voxel_centers(0)).float()
    disc = ((x[:, None] ** 2 + x[None, :] ** 2) < 100.0**2).float()[..., None]
    cases = []
    for label, sino, dose in (("model layout, full dose", model_sino, 1.0),
                              ("model layout, 1/20", model_sino, 0.05),
                              ("native 252 x 344, 1/20", SinogramGeometry.two_d(get_scanner("mmr")), 0.05)):
        g = torch.Generator().manual_seed(1)
        scan = simulate_scan(disc * 6000.0, disc * 0.0096, sino, image, duration_s=600.0, psf_fwhm_mm=4.5,
                             scatter_fraction=0.3, randoms_fraction=0.2, generator=g)
        cases.append((label, scan if dose == 1.0 else thin_scan(scan, dose, g)))
    steps = {"network + data check": lambda s: reconstruct_and_check(s, loaded, device="cpu"),
             "OSEM for reading": lambda s: osem_for_reading(s, loaded, device="cpu")}
    for _, scan in cases:  # warm-up
        for step in steps.values():
            step(scan)
    times = {(c, k): [] for c, _ in cases for k in steps}
    for _ in range(repeats):
        for label, scan in cases:
            for name, step in steps.items():
                t0 = time.perf_counter()
                step(scan)
                times[(label, name)].append(time.perf_counter() - t0)
    print("| 2D slice | settings | network + data check (s, median) | OSEM for reading (s, median) | ratio |")
    print("|---|---|---|---|---|")
    for label, scan in cases:
        net, osem = (sorted(times[(label, k)])[repeats // 2] for k in steps)
        print(f"| {label} | {osem_for_reading(scan, loaded, device='cpu').describe()} | {net:.2f} | {osem:.2f} "
              f"| {osem / net:.2f} |")
    print(f"\nCPU ({os.cpu_count()} threads), torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--3d", dest="three_d", action="store_true", help="3D mMR span 11")
    parser.add_argument("--serve", action="store_true", help="also time one TorchServe request")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--startup", action="store_true",
                        help="infer.py's start-up split on a 2D scan (fresh processes)")
    parser.add_argument("--before", type=Path, default=None,
                        help="with --startup: an older source tree to time side by side")
    parser.add_argument("--rebinned", action="store_true",
                        help="a simulated 3D mMR span-11 scan through infer.py and the 2D model")
    parser.add_argument("--rings", type=int, default=64, help="with --rebinned: mMR rings kept")
    parser.add_argument("--native", action="store_true",
                        help="with --rebinned: the vendor's 344 bins x 252 views (else the model's)")
    parser.add_argument("--check-cost", action="store_true",
                        help="with --rebinned: the network alone against it with the data check, in-process")
    parser.add_argument("--osem", action="store_true",
                        help="infer.py --osem's OSEM for reading beside the network with its data check")
    parser.add_argument("--wide", action="store_true",
                        help="2D slices of objects wider than the model's grid (grown grids)")
    args = parser.parse_args()
    if args.wide:
        return wide_main(args.repeats)
    if args.osem:
        return osem_main(args.repeats)
    if args.startup:
        return startup_main(args.before, args.repeats)
    if args.rebinned:
        return rebinned_main(args.rings, args.native, args.check_cost)
    from pet_dl.io.scanfile import write_scan

    generator = torch.Generator().manual_seed(0)
    scan = make_scan(args.three_d, generator, args.device)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt, kind = make_checkpoint(scan, work, args.three_d)
        latency, rss, gpu = bench_reconstruct(scan, ckpt, args.device, args.repeats)
        serve = float("nan")
        if args.serve:
            write_scan(work / "scan.h5", scan)
            serve = bench_serve(work / "scan.h5", ckpt, work, args.repeats)
        rows = [(kind, latency, serve, rss, gpu)]
        if not args.three_d:  # side by side: the cost of the left-right flip ensemble
            config = {k: v for k, v in CONFIG_2D.items() if k != "flip_ensemble"}
            plain = untrained_checkpoint(scan, work / "noflip.safetensors", config)
            plain_latency = bench_reconstruct(scan, plain, args.device, args.repeats)[0]
            nan = float("nan")  # the process's peaks are the first row's
            rows.append(("untrained, no flip ensemble", plain_latency, nan, nan, nan))
    label = "3D mMR span 11" if args.three_d else "2D mMR slice"
    device = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} threads)"
    )
    print(
        "| case | model | device | sinogram | image | reconstruct (s) | TorchServe request (s) "
        "| peak RSS (MB) | peak GPU (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for kind, latency, serve, rss, gpu in rows:
        print(
            f"| {label} | {kind} | {device} | {tuple(scan.sinogram.shape)} | {scan.image.shape} "
            f"| {latency:.3f} | {serve:.3f} | {rss:.0f} | {gpu:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
