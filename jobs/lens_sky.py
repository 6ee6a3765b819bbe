"""What is in one simulated cut-out: a lens, or one of the galaxies a lens search confuses with one.

A scene is a list of light components plus, for a lens, the mass that bends the background
source.  Positions are in arcseconds from the cut-out's centre; brightness is an r-band
magnitude with g-r and i-r colours.  No pixels here: jobs/lens_simulation.py observes a scene
(PSF, sky, noise) and measures it (arc signal-to-noise, magnification).

The population follows what lens searches meet (Metcalf et al. 2019; Canameras et al. 2024,
HOLISMOKES XI): lenses are massive ellipticals; non-lenses are the same ellipticals alone, and,
for most of them, the hard cases a network must learn to refuse.

Component shapes (each rendered with unit total flux, then scaled):

- ``sersic``: elliptical Sersic profile (``dust`` > 0 cuts a lane along the major axis);
- ``gaussian``: a compact knot (a star-forming clump, a small companion);
- ``ring``: a Gaussian annulus at an elliptical radius, optionally only an arc of it;
- ``arms``: logarithmic spiral arms on an exponential disk;
- ``tail``: a tidal stream along an arc of a circle, fading along its length;
- ``point``: a star (the PSF itself).
"""
from __future__ import annotations

import numpy as np

LENS = "lens"
# Non-lens kinds and their shares: at least half are the hard cases (everything but "elliptical").
NONLENS_KINDS = {
    "elliptical": 0.32,        # a lens galaxy without a source behind it
    "blue_core": 0.08,         # an elliptical with a blue nucleus or circumnuclear knots
    "blue_companion": 0.15,    # an elliptical with unlensed blue neighbours, some arc-like
    "spiral": 0.12,            # face-on, with blue arms and knots
    "ring": 0.08,              # collisional or polar-ring galaxy: a ring with no lensing mass
    "merger": 0.09,            # two galaxies and tidal tails
    "edge_on": 0.08,           # a thin disk, sometimes with a dust lane
    "group": 0.08,             # a compact group of three to five galaxies
}
KINDS = (LENS, *NONLENS_KINDS)
HARD_KINDS = tuple(k for k in NONLENS_KINDS if k != "elliptical")

RED = {"g": (1.0, 1.6), "i": (-0.7, -0.4)}      # g-r and i-r of an early-type galaxy at z ~ 0.4
BLUE = {"g": (0.0, 0.5), "i": (-0.3, 0.1)}      # star-forming
REDDISH_SOURCE = {"g": (0.8, 1.3), "i": (-0.6, -0.3)}


def colours(rng, ranges: dict) -> dict:
    return {band: float(rng.uniform(*span)) for band, span in ranges.items()}


def component(shape: str, mag_r: float, colour: dict, **geometry) -> dict:
    return {"shape": shape, "mag_r": float(mag_r), "colour": colour, **geometry}


def angle(rng) -> float:
    return float(rng.uniform(0, np.pi))


# ----------------------------------------------------------------------------- galaxies

def elliptical(rng, centre=(0.0, 0.0), theta_e: float = None) -> tuple[dict, float]:
    """A massive early-type galaxy: brighter and larger with the Einstein radius its mass
    would give (drawn here if not given, so lens and non-lens ellipticals look alike)."""
    theta_e = float(rng.uniform(0.5, 3.0)) if theta_e is None else theta_e
    mag_r = 19.7 - 2.5 * np.log10(theta_e) + rng.normal(0, 0.35)
    light = component("sersic", mag_r, colours(rng, RED), x=centre[0], y=centre[1],
                      r_eff=theta_e * rng.uniform(0.5, 1.0), n=rng.uniform(3.0, 5.0),
                      q=rng.uniform(0.6, 1.0), phi=angle(rng))
    return light, theta_e


def small_galaxy(rng, centre, mag_range=(21.0, 24.0), blue: bool = None) -> dict:
    blue = rng.random() < 0.6 if blue is None else blue
    return component("sersic", rng.uniform(*mag_range), colours(rng, BLUE if blue else RED),
                     x=centre[0], y=centre[1], r_eff=rng.uniform(0.15, 0.7),
                     n=rng.uniform(0.7, 3.0), q=rng.uniform(0.3, 1.0), phi=angle(rng))


def at_distance(rng, low: float, high: float, around=(0.0, 0.0)) -> tuple[float, float]:
    r, a = rng.uniform(low, high), rng.uniform(0, 2 * np.pi)
    return around[0] + r * np.cos(a), around[1] + r * np.sin(a)


# ----------------------------------------------------------------------------- lenses

def lens_system(rng) -> dict:
    """An SIE + external shear deflector with its light, and a structured source inside the
    caustic region (doubles as well as arcs and rings)."""
    jitter = rng.uniform(-0.263, 0.263, size=2)  # the centre is off by up to a pixel
    light, theta_e = elliptical(rng, centre=tuple(jitter))
    mass = {"theta_e": theta_e,
            # mass and light nearly, not exactly, aligned
            "q": float(np.clip(light["q"] + rng.normal(0, 0.1), 0.5, 1.0)),
            "phi": light["phi"] + float(np.deg2rad(rng.normal(0, 10))),
            "x": light["x"] + float(rng.normal(0, 0.05)), "y": light["y"] + float(rng.normal(0, 0.05)),
            "gamma1": float(rng.normal(0, 0.05)), "gamma2": float(rng.normal(0, 0.05))}
    # Uniform in radius within 0.8 theta_E, not in area: this favours the central, highly
    # magnified sources (arcs, rings, quads) over wide doubles, as magnification bias does.
    beta = theta_e * rng.uniform(0.0, 0.8)
    offset = at_distance(rng, beta, beta, around=(mass["x"], mass["y"]))
    return {"light": light, "mass": mass, "source": source(rng, offset)}


def source(rng, centre) -> list:
    """A star-forming galaxy (one in five red): a Sersic body with a few clumps.  Its total
    brightness is set later from the arc signal-to-noise drawn for the image; each part
    carries its share of the flux (``share``)."""
    palette = REDDISH_SOURCE if rng.random() < 0.2 else BLUE
    r_eff = float(np.exp(rng.uniform(np.log(0.08), np.log(0.4))))
    n_clumps = min(int(rng.poisson(2.0)), 5)
    shares = rng.uniform(0.05, 0.15, n_clumps)
    parts = [component("sersic", 0.0, colours(rng, palette), share=1.0 - shares.sum(),
                       x=centre[0], y=centre[1], r_eff=r_eff, n=rng.uniform(0.5, 1.5),
                       q=rng.uniform(0.4, 1.0), phi=angle(rng))]
    for share in shares:
        x, y = at_distance(rng, 0.0, 1.5 * r_eff, around=centre)
        clump_colour = {b: c - 0.2 for b, c in colours(rng, BLUE).items()}
        parts.append(component("gaussian", 0.0, clump_colour, share=float(share), x=x, y=y,
                               sigma=rng.uniform(0.04, 0.08), q=1.0, phi=0.0))
    return parts


# ----------------------------------------------------------------------------- hard non-lenses

def blue_companion(rng) -> list:
    light, theta_e = elliptical(rng)
    parts = [light]
    for _ in range(rng.integers(1, 4)):
        x, y = at_distance(rng, 0.7, 3.5)
        neighbour = small_galaxy(rng, (x, y), (20.5, 23.5), blue=True)
        if rng.random() < 0.5:  # stretched tangentially, as an arc would be
            neighbour.update(q=rng.uniform(0.2, 0.5), phi=float(np.arctan2(y, x) + np.pi / 2))
        parts.append(neighbour)
    return parts


def blue_core(rng) -> list:
    """An elliptical with a blue star-forming (or active) nucleus, half of them with a ring of
    blue knots within an arcsecond: under the seeing, what a lens with an Einstein radius below
    the seeing looks like.  Real searches lose small-radius lenses among these."""
    light, _ = elliptical(rng)
    parts = [light, component("gaussian", light["mag_r"] + rng.uniform(1.5, 3.5), colours(rng, BLUE),
                              x=float(rng.normal(0, 0.1)), y=float(rng.normal(0, 0.1)),
                              sigma=rng.uniform(0.05, 0.3), q=rng.uniform(0.5, 1.0), phi=angle(rng))]
    if rng.random() < 0.5:
        radius = rng.uniform(0.3, 1.0)
        for a in rng.uniform(0, 2 * np.pi, rng.integers(2, 5)):
            parts.append(component("gaussian", light["mag_r"] + rng.uniform(3.0, 4.5),
                                   colours(rng, BLUE), x=radius * np.cos(a), y=radius * np.sin(a),
                                   sigma=rng.uniform(0.04, 0.1), q=1.0, phi=0.0))
    return parts


def spiral(rng) -> list:
    scale = rng.uniform(0.5, 1.5)
    geometry = {"x": 0.0, "y": 0.0, "q": rng.uniform(0.75, 1.0), "phi": angle(rng)}
    mag_r = rng.uniform(18.5, 21.0)
    arms = component("arms", mag_r + 0.5, colours(rng, BLUE), scale=scale,
                     m=int(rng.choice([2, 2, 3])), pitch=rng.uniform(np.deg2rad(12), np.deg2rad(30)),
                     twist=angle(rng) * 2, **geometry)
    parts = [component("sersic", mag_r + 0.3, {"g": 0.7, "i": -0.35}, r_eff=1.68 * scale, n=1.0,
                       **geometry),
             component("sersic", mag_r + 1.5, colours(rng, RED), r_eff=0.3 * scale, n=3.0,
                       **geometry),
             arms]
    for _ in range(rng.integers(2, 7)):  # HII regions along the arms
        r = rng.uniform(0.8, 2.5) * scale
        a = np.log(r / scale) / np.tan(arms["pitch"]) + arms["twist"] / arms["m"] \
            + 2 * np.pi * rng.integers(arms["m"]) / arms["m"]
        parts.append(component("gaussian", mag_r + rng.uniform(2.0, 3.5), colours(rng, BLUE),
                               x=r * np.cos(a), y=r * np.sin(a), sigma=rng.uniform(0.05, 0.12),
                               q=1.0, phi=0.0))
    return parts


def ring(rng) -> list:
    """A ring galaxy, or a polar ring around a flattened host.  No lensing mass: the ring is
    the galaxy's own stars."""
    polar = rng.random() < 0.4
    host = component("sersic", rng.uniform(18.8, 20.8), colours(rng, RED), x=0.0, y=0.0,
                     r_eff=rng.uniform(0.4, 1.0), n=rng.uniform(2.0, 4.0),
                     q=rng.uniform(0.3, 0.5) if polar else rng.uniform(0.7, 1.0), phi=angle(rng))
    ring_phi = host["phi"] + np.pi / 2 + np.deg2rad(rng.normal(0, 10)) if polar else angle(rng)
    whole = rng.random() < 0.6
    band = component("ring", host["mag_r"] + rng.uniform(0.5, 2.5), colours(rng, BLUE), x=0.0,
                     y=0.0, radius=rng.uniform(0.8, 3.0), width=rng.uniform(0.08, 0.3),
                     q=rng.uniform(0.15, 0.5) if polar else rng.uniform(0.6, 1.0), phi=ring_phi,
                     span=2 * np.pi if whole else rng.uniform(0.6, 2.5), start=angle(rng) * 2)
    return [host, band]


def merger(rng) -> list:
    a = small_galaxy(rng, (0.0, 0.0), (19.0, 20.5), blue=rng.random() < 0.4)
    b = small_galaxy(rng, at_distance(rng, 0.6, 2.5), (19.5, 21.5), blue=rng.random() < 0.5)
    parts = [a, b]
    for _ in range(rng.integers(1, 3)):
        parts.append(component("tail", a["mag_r"] + rng.uniform(1.5, 3.0), colours(rng, BLUE),
                               centre_x=rng.normal(0, 0.8), centre_y=rng.normal(0, 0.8),
                               radius=rng.uniform(1.0, 3.0), width=rng.uniform(0.12, 0.35),
                               start=angle(rng) * 2, span=rng.uniform(0.8, 2.5)))
    return parts


def edge_on(rng) -> list:
    phi = angle(rng)
    mag_r = rng.uniform(18.5, 21.0)
    return [component("sersic", mag_r, colours(rng, {"g": (0.5, 1.1), "i": (-0.5, -0.2)}),
                      x=0.0, y=0.0, r_eff=rng.uniform(0.8, 2.2), n=1.0, q=rng.uniform(0.08, 0.25),
                      phi=phi, dust=rng.uniform(0.4, 0.8) if rng.random() < 0.5 else 0.0),
            component("sersic", mag_r + 1.5, colours(rng, RED), x=0.0, y=0.0,
                      r_eff=rng.uniform(0.2, 0.5), n=3.0, q=0.7, phi=phi)]


def group(rng) -> list:
    members = [elliptical(rng)[0]]
    for _ in range(rng.integers(2, 5)):
        members.append(small_galaxy(rng, at_distance(rng, 0.8, 3.0), (19.5, 22.5)))
    return members


HARD = {"blue_companion": blue_companion, "blue_core": blue_core, "spiral": spiral, "ring": ring,
        "merger": merger, "edge_on": edge_on, "group": group}


# ----------------------------------------------------------------------------- the field

def field(rng, half_size: float) -> list:
    """What shares every cut-out's sky: faint field galaxies and stars, anywhere in it."""
    parts = []
    for _ in range(rng.poisson(0.8)):
        parts.append(small_galaxy(rng, tuple(rng.uniform(-half_size, half_size, 2))))
    for _ in range(rng.poisson(0.3)):
        x, y = rng.uniform(-half_size, half_size, 2)
        parts.append(component("point", rng.uniform(17.0, 23.0),
                               {"g": rng.uniform(0.3, 1.4), "i": -rng.uniform(0.1, 0.6)}, x=x, y=y))
    return parts


def draw_kind(rng, lensed: bool) -> str:
    if lensed:
        return LENS
    names = list(NONLENS_KINDS)
    return str(rng.choice(names, p=list(NONLENS_KINDS.values())))


def scene(rng, kind: str, half_size: float) -> dict:
    """{"kind", "light": [components], "lens": deflector or None, "source": [parts] or []}."""
    if kind == LENS:
        system = lens_system(rng)
        return {"kind": kind, "light": [system["light"], *field(rng, half_size)],
                "lens": system["mass"], "source": system["source"]}
    light = elliptical(rng)[:1] if kind == "elliptical" else HARD[kind](rng)
    # Off centre by up to a pixel, as a lens is: a centred galaxy must not say "no lens".
    light = shifted(light, *rng.uniform(-0.263, 0.263, size=2))
    return {"kind": kind, "light": [*light, *field(rng, half_size)], "lens": None, "source": []}


def shifted(parts: list, dx: float, dy: float) -> list:
    moved = []
    for part in parts:
        part = dict(part)
        for x_key, y_key in (("x", "y"), ("centre_x", "centre_y")):
            if x_key in part:
                part[x_key], part[y_key] = part[x_key] + float(dx), part[y_key] + float(dy)
        moved.append(part)
    return moved
