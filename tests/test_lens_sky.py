"""The simulated sky (jobs/lens_sky.py, jobs/lens_simulation.py): every kind of image is made,
what each image records is what is in it, lensing is lenstronomy's, and the cache is keyed by
what decides the images."""
from __future__ import annotations

import numpy as np
import pytest

from jobs import lens_simulation as sim
from jobs import lens_sky

PIX = 32


@pytest.fixture(scope="module")
def chunk():
    """300 images, a third of them lenses, from one seed (deterministic)."""
    labels = np.r_[np.ones(100), np.zeros(200)].astype(np.float32)
    return sim.simulate_chunk((labels, PIX, [7, 0, 0], 25.0))


def test_every_kind_is_made_with_its_shape_and_facts(chunk):
    assert chunk["images"].shape == (300, PIX, PIX, 3) and chunk["images"].dtype == np.float32
    assert np.isfinite(chunk["images"]).all() and chunk["labels"].shape == (300, 1)
    kinds, lensed = chunk["kind"], chunk["labels"].ravel() == 1
    assert set(kinds) == set(lens_sky.KINDS)
    assert (kinds[lensed] == "lens").all() and (kinds[~lensed] != "lens").all()
    hard = np.isin(kinds[~lensed], lens_sky.HARD_KINDS).mean()
    assert hard >= 0.5, f"only {hard:.0%} of the non-lenses are hard cases"
    # A lens: Einstein radius in the drawn range, a magnified arc of the drawn signal-to-noise.
    assert ((chunk["einstein_radius"][lensed] >= 0.5) & (chunk["einstein_radius"][lensed] <= 3)).all()
    assert (chunk["magnification"][lensed] > 1).all()
    snr = chunk["arc_snr"][lensed]
    assert snr.min() >= 2.5 and snr.max() <= 160 and 15 < np.median(snr) < 40
    assert (snr < 20).mean() > 0.2  # faint arcs are common, as in a real survey
    # A non-lens: no lensing mass, no arc.
    assert (chunk["einstein_radius"][~lensed] == 0).all() and (chunk["arc_snr"][~lensed] == 0).all()
    assert np.isnan(chunk["magnification"][~lensed]).all()
    # Conditions vary per image: seeing, and depth through the number of exposures.
    assert chunk["seeing_r"].std() > 0.05 and len(set(chunk["exposures_r"])) >= 5
    assert (chunk["seeing_g"] > chunk["seeing_i"]).mean() > 0.9


def test_a_lens_arc_in_the_image_has_its_recorded_signal_to_noise():
    """Measured in the noisy image (minus everything but the arc) over the pixels the
    definition sums, the arc's signal-to-noise is the recorded one, to within the noise."""
    rng = np.random.default_rng(3)
    differences = []
    for _ in range(40):
        image, (rest, arc, sigma), record = sim.render(rng, True, PIX, 25.0)
        assert record["arc_snr"] == pytest.approx(sim.arc_snr(arc[..., 1], sigma[..., 1]))
        mask = arc[..., 1] > sigma[..., 1]
        measured = (image[..., 1] - rest[..., 1])[mask].sum() / np.sqrt((sigma[..., 1][mask] ** 2).sum())
        differences.append(measured - record["arc_snr"])
    differences = np.array(differences)
    # Each difference is a unit normal (noise summed over the mask, over its own sigma).
    assert abs(differences.mean()) < 0.6 and np.abs(differences).max() < 5, differences
    assert 0.5 < differences.std() < 1.6


def test_a_ring_galaxy_has_no_lensing_mass_and_no_arc():
    rng = np.random.default_rng(11)
    for _ in range(5):
        scene = lens_sky.scene(rng, "ring", PIX * sim.PIXEL_SCALE / 2)
        assert scene["lens"] is None and scene["source"] == []
        assert any(p["shape"] == "ring" for p in scene["light"])
        rest, arc, record = sim.observe(scene, sim.conditions(rng), PIX, 25.0)
        assert not arc.any() and record["einstein_radius"] == 0 and record["arc_snr"] == 0
        assert rest[..., 0].sum() > 0


def test_magnification_of_a_singular_isothermal_sphere_matches_the_formula():
    """lenstronomy's SIE at q=1 without shear is the SIS: a small source at beta inside the
    Einstein radius is seen twice, magnified 2 theta_E / beta in all."""
    theta_e, beta = 1.5, 0.5
    mass = {"theta_e": theta_e, "q": 1.0, "phi": 0.0, "x": 0.0, "y": 0.0, "gamma1": 0.0,
            "gamma2": 0.0}
    source = [lens_sky.component("sersic", 0.0, {"g": 0.2, "i": -0.1}, share=1.0, x=beta, y=0.0,
                                 r_eff=0.08, n=1.0, q=1.0, phi=0.0)]
    rng = np.random.default_rng(0)
    conds = sim.conditions(rng)
    psfs = {b: sim.psf_kernel(conds[b]) for b in sim.BANDS}
    _, magnification = sim.lensed_source({"lens": mass, "source": source}, 48, psfs)
    assert magnification == pytest.approx(2 * theta_e / beta, rel=0.05)


def test_sersic_and_moffat_profiles_carry_unit_flux():
    x, y = sim.grid(200, 4)  # 52" across: nearly all of both profiles
    area = (x[0, 1] - x[0, 0]) ** 2
    disk = {"x": 0.3, "y": -0.2, "r_eff": 0.8, "n": 1.0, "q": 0.6, "phi": 0.4}
    assert sim.sersic(x, y, disk).sum() * area == pytest.approx(1, rel=0.002)
    # de Vaucouleurs: about 1% of the light lies beyond 30 effective radii
    assert sim.sersic(x, y, dict(disk, n=4.0)).sum() * area == pytest.approx(0.99, abs=0.01)
    assert sim.moffat(x, y, 1.0, 3.0).sum() * area == pytest.approx(1, rel=0.01)


def test_the_cache_key_follows_what_decides_the_images():
    base = sim.SetSpec(32, 1, 25.0, (("train", 10, 10), ("test", 5, 20)))
    assert base.key() == sim.SetSpec(32, 1, 25.0, (("train", 10, 10), ("test", 5, 20))).key()
    changed = [sim.SetSpec(48, 1, 25.0, base.splits), sim.SetSpec(32, 2, 25.0, base.splits),
               sim.SetSpec(32, 1, 20.0, base.splits),
               sim.SetSpec(32, 1, 25.0, (("train", 10, 10), ("test", 5, 21)))]
    keys = {s.key() for s in changed}
    assert len(keys) == len(changed) and base.key() not in keys


def test_the_set_does_not_depend_on_the_processes_and_resumes_a_lost_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(sim, "CHUNK", 8)
    spec = sim.SetSpec(24, 5, 25.0, (("train", 10, 10), ("test", 4, 8)))
    one = sim.load_or_simulate(spec, tmp_path / "one", log=lambda *_: None)
    folder = sim.simulate(spec, tmp_path / "two", workers=2, log=lambda *_: None)
    two = {s: sim.load_split(spec, tmp_path / "two", s) for s in ("train", "test")}
    for split in ("train", "test"):
        assert np.array_equal(one[split]["images"], two[split]["images"])
        assert np.array_equal(one[split]["kind"], two[split]["kind"])
    assert one["train"]["labels"].sum() == 10 and one["test"]["labels"].sum() == 4
    lost = sorted(folder.glob("train-*.npz"))[1]
    lost.unlink()
    said = []
    sim.simulate(spec, tmp_path / "two", log=said.append)
    assert "in 1 chunks" in said[0]
    assert np.array_equal(sim.load_split(spec, tmp_path / "two", "train")["images"],
                          one["train"]["images"])
    # What `harness data pack` reads a slice at a time is the same set, across chunk edges.
    images, labels = sim.chunked_split(spec, tmp_path / "two", "train")
    assert images.shape == (20, 24, 24, 3) and len(labels) == 20
    assert np.array_equal(images[5:13], one["train"]["images"][5:13])


def test_lenses_and_non_lenses_sit_equally_off_centre():
    """A first 2-core run found every lens (even at arc S/N 3) because only lenses were off
    centre: the network read the centring, not the arc.  Both classes now share the jitter."""
    rng = np.random.default_rng(2)
    half = PIX * sim.PIXEL_SCALE / 2
    offsets = {kind: np.array([[lens_sky.scene(rng, kind, half)["light"][0][k] for k in ("x", "y")]
                               for _ in range(200)]) for kind in ("lens", "elliptical", "spiral")}
    spreads = {kind: float(np.abs(xy).mean()) for kind, xy in offsets.items()}
    assert all(0.1 < s < 0.16 for s in spreads.values()), spreads  # uniform in +-0.263": mean 0.13


def test_array_tasks_share_the_chunks_out(tmp_path, monkeypatch, capsys):
    """`python -m jobs.lens_simulation SPEC --task I --tasks N` (a SLURM array task each) makes
    every N-th chunk; together they make the set the job then loads without simulating."""
    from harness.spec.loader import load_spec
    monkeypatch.setattr(sim, "CHUNK", 10)
    spec_file = __import__("conftest").REPO / "jobs" / "lensfinder_cnn.yaml"
    sets = ["data.n_images=200", "data.num_pix=24", "data.test_lenses=10", "data.test_nonlenses=30",
            f"data.cache_dir={tmp_path}"]
    args = [str(spec_file), *(a for s in sets for a in ("--set", s)), "--workers", "1"]
    assert sim.main([*args, "--task", "0", "--tasks", "2"]) == 0
    data = load_spec(spec_file, sets).data
    folder = data.set_spec().folder(tmp_path)
    made = len(list(folder.glob("*.npz")))
    assert made == 12  # 24 chunks of 10 (160 train, 40 val, 40 test), every other one
    assert sim.main([*args, "--task", "1", "--tasks", "2"]) == 0
    assert len(list(folder.glob("*.npz"))) == 24
    said = []
    sim.simulate(data.set_spec(), tmp_path, log=said.append)
    assert said == []  # nothing left to simulate
    assert sim.main([str(spec_file), "--set", "data.num_pix=7"]) == 2
    assert "data.num_pix" in capsys.readouterr().err


def test_the_gpu_tier_spec_loads_and_its_resnet_builds():
    from harness.spec.loader import load_spec
    from jobs import lensfinder_cnn
    spec = load_spec(__import__("conftest").REPO / "jobs" / "lensfinder_gpu.yaml")
    assert spec.data.model == "resnet" and spec.data.num_pix == 64
    counts = {name: lens + non for name, lens, non in spec.data.set_spec().splits}
    assert counts["train"] >= 1_000_000 and counts["test"] >= 1_000_000
    model = lensfinder_cnn.build_model(spec.data)
    assert model.output_shape == (None, 1)
    assert sum(type(layer).__name__ == "Add" for layer in model.layers) == 8  # 4 stages x 2 blocks


def test_a_bright_star_at_the_edge_does_not_set_the_stretch():
    from jobs import lensfinder_cnn
    galaxy = np.zeros((1, 48, 48, 3), np.float32)
    galaxy[0, 20:28, 20:28] = 1.0  # the candidate, in the central third
    with_star = galaxy.copy()
    with_star[0, 2:5, 2:5] = 50.0  # a field star fifty times brighter, in a corner
    plain, starred = lensfinder_cnn.normalise(galaxy), lensfinder_cnn.normalise(with_star)
    np.testing.assert_allclose(starred[0, 16:32, 16:32], plain[0, 16:32, 16:32])
    assert plain[0, 24, 24, 1] == pytest.approx(np.arcsinh(5.0), rel=1e-5)


def test_test_scores_are_the_mean_over_the_four_mirror_images():
    from jobs import lensfinder_cnn

    class TopLeftPixel:  # a "model" that scores an image by its top-left pixel
        def predict(self, images, batch_size, verbose):
            return images[:, 0, 0, 0:1]

    images = np.zeros((2, 4, 4, 1), np.float32)
    images[0, 0, 0], images[0, 3, 0], images[0, 0, 3], images[0, 3, 3] = 1.0, 2.0, 3.0, 6.0
    images[1, 3, 3] = 8.0
    scores = lensfinder_cnn.flip_averaged_scores(TopLeftPixel(), images)
    np.testing.assert_allclose(scores, [(1 + 2 + 3 + 6) / 4, 8 / 4])


def test_the_small_cnn_looks_at_the_central_32_pixels():
    from harness.spec.loader import load_spec
    from jobs import lensfinder_cnn
    spec = load_spec(__import__("conftest").REPO / "jobs" / "lensfinder_2core.yaml")
    model = lensfinder_cnn.build_model(spec.data)
    crop = next(layer for layer in model.layers if type(layer).__name__ == "CenterCrop")
    assert crop.output_shape[1:3] == (32, 32) and model.output_shape == (None, 1)
