"""Observe simulated scenes (jobs/lens_sky.py) as DES-like g, r, i cut-outs, in parallel, cached.

Per image, the observing conditions are drawn, as they vary across a survey's footprint:

- seeing (FWHM) per band: r log-normal around 0.95" (DES wide-field), g 12% and i 8% different,
  with a Moffat PSF (beta 2.5-4.5);
- sky brightness per band around DES's (g 22.0, r 21.2, i 19.9 mag/arcsec^2, +-0.2 mag);
- the number of 90 s exposures per band, 3 to 10 (so the depth varies by a magnitude).

Lensing is lenstronomy's: the source is seen through an SIE + external shear, its surface
brightness evaluated where lenstronomy's ray shooting lands (4x4 samples a pixel).  Everything
else is drawn on 2x2 samples a pixel, binned, convolved with the band's PSF; stars are the PSF.
Noise is the photon noise of sky and sources plus read noise (7 e- per exposure).

Each image is measured as it is made:

- ``arc_snr``: the r-band signal-to-noise of the lensed source, summed over the pixels where
  the arc is brighter than the noise (Collett 2015, ApJ 811, 20).  The source's brightness is
  set so this lands on a value drawn log-normal around ``arc_snr_median`` (0.3 dex, 3-150);
- ``magnification``: the source's lensed flux over its unlensed flux (all its images, also
  those a small cut-out leaves out);
- ``einstein_radius`` (0 for a non-lens: no lensing mass), seeing per band, exposures, the kind.

The set is made in chunks of 250 images, each seeded from (seed, split, chunk) and cached in its
own file: the result does not depend on how many processes make it, an interrupted simulation
resumes at its first missing chunk, and a SLURM job array can share the chunks out::

    python -m jobs.lens_simulation jobs/lensfinder_gpu.yaml --task $SLURM_ARRAY_TASK_ID --tasks 64

No TensorFlow here.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jobs import lens_sky

BANDS = ("g", "r", "i")
PIXEL_SCALE = 0.263  # arcsec per pixel, DECam
ZERO_POINT = {"g": 26.58, "r": 26.78, "i": 26.75}  # DES, counts/s for magnitude 0 (lenstronomy)
SKY = {"g": 22.01, "r": 21.15, "i": 19.89}  # mag/arcsec^2
EXPOSURE_S = 90.0
READ_NOISE = 7.0  # electrons per exposure
SEEING_RATIO = {"g": 1.12, "r": 1.0, "i": 0.92}
CHUNK = 250
LENS_SAMPLES, LIGHT_SAMPLES = 4, 2  # sub-pixel samples per pixel side
PSF_SIZE = 25  # pixels
INFO_FIELDS = ("kind", "einstein_radius", "arc_snr", "magnification", "seeing_g", "seeing_r",
               "seeing_i", "exposures_r")
VERSION = 6  # bump when the physics changes, so old caches are not reused


@dataclass(frozen=True)
class SetSpec:
    """What decides the images: the cache key.  ``lenses``/``nonlenses`` per split."""

    num_pix: int
    seed: int
    arc_snr_median: float
    splits: tuple  # ((name, lenses, nonlenses), ...)

    def key(self) -> str:
        text = json.dumps({"version": VERSION, "num_pix": self.num_pix, "seed": self.seed,
                           "arc_snr_median": self.arc_snr_median, "splits": self.splits})
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def folder(self, cache_dir) -> Path:
        return Path(cache_dir) / f"lenses-{self.num_pix}px-seed{self.seed}-{self.key()}"

    def chunks(self) -> list:
        """(split, index, labels) for every chunk, in order."""
        out = []
        for split_index, (split, lenses, nonlenses) in enumerate(self.splits):
            rng = np.random.default_rng([self.seed, split_index, VERSION])
            labels = rng.permutation(np.r_[np.ones(lenses), np.zeros(nonlenses)]).astype(np.float32)
            for index, start in enumerate(range(0, len(labels), CHUNK)):
                out.append((split, index, labels[start:start + CHUNK]))
        return out


# ----------------------------------------------------------------------------- observing

def conditions(rng) -> dict:
    """Per band: seeing FWHM (arcsec), Moffat beta, sky (mag/arcsec^2), exposures."""
    seeing_r = float(np.clip(0.95 * np.exp(rng.normal(0, 0.15)), 0.7, 1.6))
    beta = float(rng.uniform(2.5, 4.5))
    return {band: {"fwhm": seeing_r * SEEING_RATIO[band] * float(rng.normal(1, 0.03)), "beta": beta,
                   "sky": SKY[band] + float(rng.normal(0, 0.2)),
                   "exposures": int(rng.integers(3, 11))} for band in BANDS}


def flux(mag: float, band: str) -> float:
    """Counts per second of a magnitude ``mag`` source in ``band``."""
    return 10 ** (-0.4 * (mag - ZERO_POINT[band]))


def band_flux(part: dict, band: str) -> float:
    return flux(part["mag_r"] + (part["colour"].get(band, 0.0) if band != "r" else 0.0), band)


def grid(num_pix: int, samples: int):
    """Sub-pixel centres (arcsec) of a num_pix x num_pix cut-out, ``samples`` per pixel side."""
    side = (np.arange(num_pix * samples) + 0.5) / samples - num_pix / 2
    return np.meshgrid(side * PIXEL_SCALE, side * PIXEL_SCALE)


def to_pixels(surface: np.ndarray, samples: int) -> np.ndarray:
    """Surface brightness on sub-pixels -> flux per pixel."""
    n = surface.shape[0] // samples
    return surface.reshape(n, samples, n, samples).mean(axis=(1, 3)) * PIXEL_SCALE ** 2


def moffat(x, y, fwhm: float, beta: float) -> np.ndarray:
    """Unit-flux Moffat surface brightness centred on (0, 0)."""
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    return (beta - 1) / (np.pi * alpha ** 2) * (1 + (x ** 2 + y ** 2) / alpha ** 2) ** -beta


def psf_kernel(band_conditions: dict) -> np.ndarray:
    x, y = grid(PSF_SIZE, 4)
    kernel = to_pixels(moffat(x, y, band_conditions["fwhm"], band_conditions["beta"]), 4)
    return kernel / kernel.sum()


# ----------------------------------------------------------------------------- profiles

def _rotated(x, y, part):
    c, s = np.cos(part["phi"]), np.sin(part["phi"])
    dx, dy = x - part["x"], y - part["y"]
    return c * dx + s * dy, -s * dx + c * dy


def _elliptical_radius(x, y, part):
    u, v = _rotated(x, y, part)
    return np.sqrt(part["q"] * u ** 2 + v ** 2 / part["q"]), u, v  # area-preserving


def sersic_b(n: float) -> float:
    return 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n ** 2)  # Ciotti & Bertin 1999


def sersic(x, y, part) -> np.ndarray:
    """Unit total flux (analytic, so a lensed source's flux measures its magnification)."""
    from scipy.special import gamma
    n, r_eff = part["n"], part["r_eff"]
    b = sersic_b(n)
    r, u, v = _elliptical_radius(x, y, part)
    total = 2 * np.pi * n * r_eff ** 2 * np.exp(b) * b ** (-2 * n) * gamma(2 * n)
    surface = np.exp(-b * ((r / r_eff) ** (1 / n) - 1)) / total
    if part.get("dust"):  # a lane along the major axis, absorbing up to ``dust`` of the light
        surface = surface * (1 - part["dust"] * np.exp(-0.5 * (v / (0.15 * r_eff)) ** 2))
    return surface


def gaussian(x, y, part) -> np.ndarray:
    r, _, _ = _elliptical_radius(x, y, part)
    return np.exp(-0.5 * (r / part["sigma"]) ** 2) / (2 * np.pi * part["sigma"] ** 2)


def _arc_window(angle, start, span):
    along = np.mod(angle - start, 2 * np.pi)
    return np.where(along < span, 1.0, 0.0) * np.exp(-along / max(span, 1e-3))


def ring(x, y, part) -> np.ndarray:
    r, u, v = _elliptical_radius(x, y, part)
    surface = np.exp(-0.5 * ((r - part["radius"]) / part["width"]) ** 2)
    if part["span"] < 2 * np.pi:
        surface = surface * _arc_window(np.arctan2(v, u), part["start"], part["span"])
    return surface


def arms(x, y, part) -> np.ndarray:
    r, u, v = _elliptical_radius(x, y, part)
    r = np.maximum(r, 1e-3)
    phase = part["m"] * (np.arctan2(v, u) - np.log(r / part["scale"]) / np.tan(part["pitch"])) \
        - part["twist"]
    pattern = np.clip(np.cos(phase), 0, None) ** 4
    return np.exp(-r / part["scale"]) * pattern * (r > 0.3 * part["scale"])


def tail(x, y, part) -> np.ndarray:
    dx, dy = x - part["centre_x"], y - part["centre_y"]
    distance = np.hypot(dx, dy) - part["radius"]
    return np.exp(-0.5 * (distance / part["width"]) ** 2) * \
        _arc_window(np.arctan2(dy, dx), part["start"], part["span"])


ANALYTIC = {"sersic": sersic, "gaussian": gaussian}
NUMERIC = {"ring": ring, "arms": arms, "tail": tail}  # normalised to unit flux in the cut-out


def unit_surface(x, y, part) -> np.ndarray:
    if part["shape"] in ANALYTIC:
        return ANALYTIC[part["shape"]](x, y, part)
    surface = NUMERIC[part["shape"]](x, y, part)
    area = (x[0, 1] - x[0, 0]) ** 2
    return surface / max(surface.sum() * area, 1e-30)


# ----------------------------------------------------------------------------- rendering

def light_image(parts: list, num_pix: int, psfs: dict) -> np.ndarray:
    """Noise-free (num_pix, num_pix, bands) flux of unlensed light, PSF included."""
    from scipy.signal import fftconvolve
    x, y = grid(num_pix, LIGHT_SAMPLES)
    extended = [(to_pixels(unit_surface(x, y, p), LIGHT_SAMPLES), p) for p in parts
                if p["shape"] != "point"]
    stars = [p for p in parts if p["shape"] == "point"]
    bands = []
    for band in BANDS:
        image = sum((band_flux(p, band) * unit for unit, p in extended), np.zeros((num_pix,) * 2))
        image = fftconvolve(image, psfs[band], mode="same")
        for star in stars:
            image += band_flux(star, band) * to_pixels(moffat(
                x - star["x"], y - star["y"], psfs["conditions"][band]["fwhm"],
                psfs["conditions"][band]["beta"]), LIGHT_SAMPLES)
        bands.append(image)
    return np.stack(bands, axis=-1)


def lensed_source(system: dict, num_pix: int, psfs: dict) -> tuple[np.ndarray, float]:
    """(arc per unit r-band source flux, PSF included, per band; magnification)."""
    from scipy.signal import fftconvolve
    x, y = grid(num_pix, LENS_SAMPLES)
    beta_x, beta_y = ray_shoot(system["lens"], x, y)
    per_band = {band: np.zeros((num_pix,) * 2) for band in BANDS}
    lensed_flux = 0.0
    for part in system["source"]:
        unit = to_pixels(ANALYTIC[part["shape"]](beta_x, beta_y, part), LENS_SAMPLES) * part["share"]
        lensed_flux += unit.sum()
        for band in BANDS:  # colour: flux in band per unit r-band flux
            per_band[band] += unit * flux(part["colour"].get(band, 0.0) if band != "r" else 0.0,
                                          band) / flux(0.0, "r")
    arc = np.stack([fftconvolve(per_band[b], psfs[b], mode="same") for b in BANDS], axis=-1)
    reach = 2 * system["lens"]["theta_e"] + 1.5  # arcsec from the centre holding every image
    if reach > num_pix * PIXEL_SCALE / 2:  # images fall outside the cut-out: count them too
        lensed_flux = lensed_flux_within(system, int(np.ceil(2 * reach / PIXEL_SCALE)))
    return arc, float(lensed_flux)


def lensed_flux_within(system: dict, num_pix: int) -> float:
    """The source's lensed flux (per unit unlensed flux) over a num_pix-wide field."""
    x, y = grid(num_pix, LENS_SAMPLES)
    beta_x, beta_y = ray_shoot(system["lens"], x, y)
    return float(sum(to_pixels(ANALYTIC[p["shape"]](beta_x, beta_y, p), LENS_SAMPLES).sum()
                     * p["share"] for p in system["source"]))


def ray_shoot(mass: dict, x, y):
    """Source-plane positions of image-plane points through SIE + external shear (lenstronomy)."""
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.Util.param_util import phi_q2_ellipticity
    e1, e2 = phi_q2_ellipticity(mass["phi"], mass["q"])
    kwargs = [{"theta_E": mass["theta_e"], "e1": e1, "e2": e2, "center_x": mass["x"],
               "center_y": mass["y"]},
              {"gamma1": mass["gamma1"], "gamma2": mass["gamma2"], "ra_0": mass["x"],
               "dec_0": mass["y"]}]
    return LensModel(["SIE", "SHEAR"]).ray_shooting(x, y, kwargs)


def noise_sigma(model: np.ndarray, conds: dict) -> np.ndarray:
    """Per-pixel noise (counts/s) of a noise-free image: photon noise of sky and sources, read
    noise of each exposure."""
    out = np.empty_like(model)
    for k, band in enumerate(BANDS):
        c = conds[band]
        seconds = c["exposures"] * EXPOSURE_S
        sky = flux(c["sky"], band) * PIXEL_SCALE ** 2
        electrons = (sky + np.clip(model[..., k], 0, None)) * seconds + c["exposures"] * READ_NOISE ** 2
        out[..., k] = np.sqrt(electrons) / seconds
    return out


def arc_snr(arc_r: np.ndarray, sigma_r: np.ndarray) -> float:
    """Signal-to-noise of an arc over the pixels where it outshines the noise (Collett 2015)."""
    mask = arc_r > sigma_r
    if not mask.any():
        return 0.0
    return float(arc_r[mask].sum() / np.sqrt((sigma_r[mask] ** 2).sum()))


def source_flux_for(target: float, arc_unit: np.ndarray, rest: np.ndarray, conds: dict) -> float:
    """The r-band source flux (counts/s) whose arc has signal-to-noise ``target`` (bisection in
    log flux: the arc's own photon noise enters too)."""
    c = conds["r"]
    seconds = c["exposures"] * EXPOSURE_S
    floor = flux(c["sky"], "r") * PIXEL_SCALE ** 2 * seconds + c["exposures"] * READ_NOISE ** 2
    rest_r, arc_r = np.clip(rest[..., 1], 0, None), arc_unit[..., 1]

    def snr(f):  # noise_sigma's r band, inlined: this runs 40 times an image
        return arc_snr(f * arc_r, np.sqrt(floor + (rest_r + f * arc_r) * seconds) / seconds)
    low, high = 1e-2, 1e5
    for _ in range(40):
        mid = np.sqrt(low * high)
        low, high = (mid, high) if snr(mid) < target else (low, mid)
    return float(np.sqrt(low * high))


def observe(scene: dict, conds: dict, num_pix: int, snr_target: float):
    """(noise-free image without the arc, arc, record) of one scene: the arc is zero for a
    non-lens."""
    psfs = {band: psf_kernel(conds[band]) for band in BANDS}
    psfs["conditions"] = conds
    rest = light_image(scene["light"], num_pix, psfs)
    record = {"kind": scene["kind"], "einstein_radius": 0.0, "arc_snr": 0.0,
              "magnification": float("nan"), "exposures_r": conds["r"]["exposures"],
              **{f"seeing_{b}": conds[b]["fwhm"] for b in BANDS}}
    arc = np.zeros_like(rest)
    if scene["lens"] is not None:
        arc_unit, magnification = lensed_source(scene, num_pix, psfs)
        arc = source_flux_for(snr_target, arc_unit, rest, conds) * arc_unit
        record.update(einstein_radius=scene["lens"]["theta_e"], magnification=magnification,
                      arc_snr=arc_snr(arc[..., 1], noise_sigma(rest + arc, conds)[..., 1]))
    return rest, arc, record


def render(rng, lensed: bool, num_pix: int, arc_snr_median: float):
    """(noisy image, noise-free parts (rest, arc, sigma), record) of one cut-out."""
    conds = conditions(rng)
    half_size = num_pix * PIXEL_SCALE / 2
    scene = lens_sky.scene(rng, lens_sky.draw_kind(rng, lensed), half_size)
    snr_target = float(np.clip(arc_snr_median * 10 ** rng.normal(0, 0.3), 3, 150))
    rest, arc, record = observe(scene, conds, num_pix, snr_target)
    sigma = noise_sigma(rest + arc, conds)
    image = rest + arc + sigma * rng.standard_normal(rest.shape)
    return image.astype(np.float32), (rest, arc, sigma), record


# ----------------------------------------------------------------------------- sets and cache

def simulate_chunk(args) -> dict:
    """One chunk: images, labels and per-image records; deterministic in its seed."""
    labels, num_pix, seed, arc_snr_median = args
    rng = np.random.default_rng(seed)
    images, records = [], []
    for label in labels:
        image, _, record = render(rng, bool(label), num_pix, arc_snr_median)
        images.append(image)
        records.append(record)
    info = {name: np.array([r[name] for r in records]) for name in INFO_FIELDS}
    return {"images": np.stack(images), "labels": np.asarray(labels, np.float32)[:, None], **info}


def chunk_path(folder: Path, split: str, index: int) -> Path:
    return folder / f"{split}-{index:05d}.npz"


def make_chunk(spec: SetSpec, folder: Path, chunk: tuple) -> Path:
    """Simulate one chunk into its file (written under another name, then renamed)."""
    split, index, labels = chunk
    path = chunk_path(folder, split, index)
    if path.exists():
        return path
    split_index = [s[0] for s in spec.splits].index(split)
    result = simulate_chunk((labels, spec.num_pix, [spec.seed, split_index, index, VERSION],
                             spec.arc_snr_median))
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **result)
    os.replace(tmp, path)
    return path


def _make_chunk(args):
    return make_chunk(*args)


def simulate(spec: SetSpec, cache_dir, workers: int = None, task: int = 0, tasks: int = 1,
             log=print) -> Path:
    """Make this task's share of the missing chunks in parallel processes; returns the folder."""
    folder = spec.folder(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    todo = [c for c in spec.chunks()[task::tasks] if not chunk_path(folder, c[0], c[1]).exists()]
    if not todo:
        return folder
    images = sum(len(c[2]) for c in todo)
    log(f"simulating {images} DES-like {spec.num_pix}x{spec.num_pix} gri images in "
        f"{len(todo)} chunks (once; cached in {folder})")
    workers = min(workers or os.cpu_count() or 1, len(todo))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for done, _ in enumerate(pool.map(_make_chunk, [(spec, folder, c) for c in todo]), 1):
            if done % max(1, len(todo) // 10) == 0 or done == len(todo):
                log(f"  {done}/{len(todo)} chunks")
    return folder


def load_split(spec: SetSpec, cache_dir, split: str) -> dict:
    """One split's images, labels and records, from its chunks in order."""
    return _read_split(spec, cache_dir, split, lambda f: {k: f[k] for k in f.files})


def _read_split(spec: SetSpec, cache_dir, split: str, read) -> dict:
    """``read`` (an open chunk file -> {name: array}) over the split's chunks, concatenated."""
    folder = spec.folder(cache_dir)
    parts = []
    for name, index, _ in spec.chunks():
        if name == split:
            with np.load(chunk_path(folder, name, index)) as f:
                parts.append(read(f))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class ChunkedArray:
    """One array of a split (``images`` or ``labels``), read from its chunk files a slice at a
    time: what ``harness data pack`` needs to pack a set larger than memory."""

    def __init__(self, paths: list, key: str, sizes: list, transform=None):
        self.paths, self.key, self.transform = paths, key, transform or (lambda a: a)
        self.starts = np.r_[0, np.cumsum(sizes)]
        first = self[0:1]
        self.shape, self.dtype = (int(self.starts[-1]), *first.shape[1:]), first.dtype

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, window: slice) -> np.ndarray:
        start, stop, _ = window.indices(int(self.starts[-1]))
        parts = []
        for k, path in enumerate(self.paths):
            low, high = max(start, self.starts[k]), min(stop, self.starts[k + 1])
            if low < high:
                with np.load(path) as f:
                    parts.append(f[self.key][low - self.starts[k]:high - self.starts[k]])
        return self.transform(np.concatenate(parts))


def chunked_split(spec: SetSpec, cache_dir, split: str, transform=None) -> tuple:
    """(images, labels) of a simulated split as ChunkedArrays."""
    folder = spec.folder(cache_dir)
    mine = [(chunk_path(folder, name, index), len(labels))
            for name, index, labels in spec.chunks() if name == split]
    paths, sizes = [p for p, _ in mine], [n for _, n in mine]
    return (ChunkedArray(paths, "images", sizes, transform), ChunkedArray(paths, "labels", sizes))


def load_info(spec: SetSpec, cache_dir, split: str) -> dict:
    """A split's per-image records and labels (so the order can be checked), without images."""
    return _read_split(spec, cache_dir, split, lambda f: {
        "label": f["labels"].ravel().astype(int), **{k: f[k] for k in INFO_FIELDS}})


def load_or_simulate(spec: SetSpec, cache_dir, log=print) -> dict:
    """{split: {"images", "labels", records...}}: simulated (only what is missing) and cached."""
    simulate(spec, cache_dir, log=log)
    return {split: load_split(spec, cache_dir, split) for split, _, _ in spec.splits}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Simulate a lens finder's images into its cache "
                                "(a SLURM array task makes every --tasks-th chunk).")
    p.add_argument("spec", help="the job's YAML spec (jobs/lensfinder_cnn.yaml)")
    p.add_argument("--set", action="append", default=[], help="spec override, as for harness run")
    p.add_argument("--task", type=int, default=int(os.environ.get("SLURM_ARRAY_TASK_ID", 0)))
    p.add_argument("--tasks", type=int, default=1)
    p.add_argument("--workers", type=int, default=None)
    args = p.parse_args(argv)
    from harness.errors import UserError
    from harness.spec.loader import load_spec
    try:
        spec = load_spec(args.spec, args.set)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data = spec.data
    folder = simulate(data.set_spec(), data.cache_dir, args.workers, args.task, args.tasks)
    print(f"task {args.task}/{args.tasks}: chunks in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
