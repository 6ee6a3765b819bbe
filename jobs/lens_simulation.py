"""DES-like images of strong gravitational lenses and of non-lensed galaxies, with lenstronomy.

A lens is a massive early-type galaxy (SIE mass + external shear, Sersic
light) with a faint, blue, compact Sersic source behind it: the source is
stretched into arcs or a ring at the Einstein radius (0.8-2.5 arcsec).  A
non-lens is the same kind of galaxy with no lensed source.  Images are g, r,
i at the DECam pixel scale (0.263 arcsec/pixel) with DES seeing, sky and read
noise (lenstronomy's DES configuration, 3-year coadd).

No TensorFlow here: the set is simulated once, in parallel, before training.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

BANDS = ("g", "r", "i")
PIXEL_SCALE = 0.263  # arcsec per pixel, DECam
KWARGS_MODEL = {
    "lens_model_list": ["SIE", "SHEAR"],
    "lens_light_model_list": ["SERSIC_ELLIPSE"],
    "source_light_model_list": ["SERSIC_ELLIPSE"],
}
VERSION = 3  # bump when the physics below changes, so old caches are not reused


def _simulators(num_pix: int):
    from lenstronomy.SimulationAPI.ObservationConfig.DES import DES
    from lenstronomy.SimulationAPI.sim_api import SimAPI

    sims = []
    for band in BANDS:
        kwargs_band = DES(band=band, coadd_years=3).kwargs_single_band()
        sim = SimAPI(num_pix=num_pix, kwargs_single_band=kwargs_band, kwargs_model=KWARGS_MODEL)
        sims.append((sim, sim.image_model_class({"supersampling_factor": 1})))
    return sims


def _ellipticity(rng, q_range):
    from lenstronomy.Util.param_util import phi_q2_ellipticity
    return phi_q2_ellipticity(rng.uniform(0, np.pi), rng.uniform(*q_range))


def _draw_system(rng) -> dict:
    """Physical parameters of one lens galaxy and (possibly) its background source."""
    e1, e2 = _ellipticity(rng, (0.6, 1.0))
    mag_r = rng.uniform(18.5, 20.5)
    lens_colors = {"g": rng.uniform(1.0, 1.6), "r": 0.0, "i": -rng.uniform(0.4, 0.7)}  # red
    se1, se2 = _ellipticity(rng, (0.4, 1.0))
    theta_e = rng.uniform(0.8, 2.5)
    radius = theta_e * np.sqrt(rng.uniform(0.0, 0.25))  # source inside ~half the Einstein radius
    angle = rng.uniform(0, 2 * np.pi)
    source_dimming = rng.uniform(2.5, 5.5)  # magnitudes fainter than the lens, unlensed
    return {
        "lens": [{"theta_E": theta_e, "e1": e1, "e2": e2, "center_x": 0.0, "center_y": 0.0},
                 {"gamma1": rng.normal(0, 0.05), "gamma2": rng.normal(0, 0.05), "ra_0": 0, "dec_0": 0}],
        "lens_light": {"R_sersic": rng.uniform(0.6, 1.6), "n_sersic": rng.uniform(3.0, 5.0),
                       "e1": e1, "e2": e2, "center_x": 0.0, "center_y": 0.0},
        "lens_mags": {b: mag_r + c for b, c in lens_colors.items()},
        "source": {"R_sersic": rng.uniform(0.1, 0.4), "n_sersic": rng.uniform(0.8, 1.5),
                   "e1": se1, "e2": se2,
                   "center_x": radius * np.cos(angle), "center_y": radius * np.sin(angle)},
        # Fainter than the lens before magnification, and blue (star-forming).
        "source_mags": {b: mag_r + source_dimming + c for b, c in
                        {"g": rng.uniform(0.0, 0.4), "r": 0.0, "i": -rng.uniform(0.0, 0.3)}.items()},
    }


def _render(system: dict, lensed: bool, sims, rng) -> np.ndarray:
    """One (num_pix, num_pix, 3) image in counts per second, noise included."""
    bands = []
    for band, (sim, image_model) in zip(BANDS, sims):
        light = [dict(system["lens_light"], magnitude=system["lens_mags"][band])]
        source = [dict(system["source"], magnitude=system["source_mags"][band])]
        kwargs_light, kwargs_source, _ = sim.magnitude2amplitude(light, source, None)
        if not lensed:
            kwargs_source = [dict(kwargs_source[0], amp=0.0)]
        image = image_model.image(system["lens"], kwargs_source, kwargs_light, None)
        np.random.seed(rng.integers(2**31))  # lenstronomy draws its noise from NumPy's global RNG
        bands.append(image + sim.noise_for_model(model=image))
    return np.stack(bands, axis=-1).astype(np.float32)


def simulate_chunk(args) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images (half lenses, shuffled) from seed ``seed``: deterministic."""
    count, num_pix, seed = args
    rng = np.random.default_rng(seed)
    sims = _simulators(num_pix)
    labels = rng.permutation(np.arange(count) % 2).astype(np.float32)
    images = np.stack([_render(_draw_system(rng), bool(y), sims, rng) for y in labels])
    return images, labels[:, None]


def cache_path(cache_dir: str, n_images: int, num_pix: int, seed: int) -> Path:
    key = hashlib.sha1(f"v{VERSION}-{n_images}-{num_pix}-{seed}".encode()).hexdigest()[:10]
    return Path(cache_dir) / f"lenses-{n_images}x{num_pix}px-seed{seed}-{key}.npz"


def simulate(n_images: int, num_pix: int, seed: int, workers: int | None = None):
    """The whole set, simulated in parallel chunks (the result does not depend on ``workers``)."""
    chunk = 250
    jobs = [(min(chunk, n_images - start), num_pix, seed * 100_003 + start)
            for start in range(0, n_images, chunk)]
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(simulate_chunk, jobs))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_or_simulate(cache_dir: str, n_images: int, num_pix: int, seed: int, log=print):
    """Read the cached set, or simulate it once and cache it atomically."""
    path = cache_path(cache_dir, n_images, num_pix, seed)
    if path.exists():
        with np.load(path) as f:
            return f["images"], f["labels"]
    log(f"simulating {n_images} DES-like {num_pix}x{num_pix} gri images with lenstronomy "
        f"(once; cached in {path})")
    images, labels = simulate(n_images, num_pix, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, images=images, labels=labels)
    os.replace(tmp, path)
    return images, labels
