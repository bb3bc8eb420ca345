"""Planted rare classes (strong lenses, broad-line AGN) in the mock survey."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import asdict

import h5py
import numpy as np
import pytest

from galclip.config import MockConfig
from galclip.data.layout import PIXEL_SCALE_ARCSEC, desi_wavelength
from galclip.data.mock.plant import (
    HALPHA,
    HBETA,
    PLANT_CLASSES,
    agn_component,
    choose_planted,
    lens_arcs,
    parse_plant,
)
from galclip.data.survey import SurveyReader
from galclip.errors import InputError

PLANT = (("lenses", 0.05), ("agn", 0.05))
SMALL = dict(pairs=60, seed=4, batch_size=32, n_groups=2)  # two batches, two groups


# --- --plant ------------------------------------------------------------------------------------------------------


def test_parse_plant_reads_classes_and_rates():
    assert parse_plant("lenses=0.01,agn=0.01") == {"lenses": 0.01, "agn": 0.01}
    assert parse_plant(" AGN = 0.2 , lenses=0.5") == {"agn": 0.2, "lenses": 0.5}
    assert parse_plant("lenses=1e-3") == {"lenses": 0.001}


@pytest.mark.parametrize(
    "text, words",
    [
        ("", ["empty", "lenses, agn"]),
        ("  ", ["empty"]),
        ("lens=0.01", ["'lens'", "unknown class", "lenses, agn"]),
        ("lenses=x", ["'x'", "not a number", "(0, 0.5]"]),
        ("lenses=0", ["not in (0, 0.5]"]),
        ("lenses=0.6", ["not in (0, 0.5]"]),
        ("lenses=nan", ["(0, 0.5]"]),
        ("lenses=0.01,lenses=0.02", ["'lenses=0.02'", "twice"]),
        ("lenses", ["no rate", "CLASS=RATE"]),
        ("lenses=0.01,", ["empty item"]),
    ],
)
def test_parse_plant_refuses_bad_text_naming_the_option(text, words):
    with pytest.raises(InputError) as err:
        parse_plant(text)
    msg = str(err.value)
    assert msg.startswith("--plant") and "\n" not in msg
    for word in words:
        assert word in msg


def test_choose_planted_counts_are_disjoint_and_seeded():
    masks = choose_planted(np.random.default_rng(0), 1000, {"lenses": 0.01, "agn": 0.015})
    assert set(masks) == {"lenses", "agn"}
    assert masks["lenses"].shape == (1000,) and masks["lenses"].dtype == bool
    assert masks["lenses"].sum() == 10 and masks["agn"].sum() == 15
    assert not (masks["lenses"] & masks["agn"]).any()
    # the order the rates are given in does not matter; the seed does
    again = choose_planted(np.random.default_rng(0), 1000, {"agn": 0.015, "lenses": 0.01})
    for name in masks:
        np.testing.assert_array_equal(masks[name], again[name])
    assert not np.array_equal(
        choose_planted(np.random.default_rng(1), 1000, {"lenses": 0.01})["lenses"], masks["lenses"]
    )
    # round half up, at least one
    assert choose_planted(np.random.default_rng(0), 50, {"lenses": 0.01})["lenses"].sum() == 1
    assert choose_planted(np.random.default_rng(0), 150, {"lenses": 0.01})["lenses"].sum() == 2
    assert choose_planted(np.random.default_rng(0), 10, {"agn": 0.01})["agn"].sum() == 1
    with pytest.raises(InputError, match="--plant"):
        choose_planted(np.random.default_rng(0), 3, {"lenses": 0.5, "agn": 0.5})


def test_mock_config_plant_is_validated_and_json_friendly():
    config = MockConfig(plant=[["lenses", "0.01"], ("agn", 0.02)])
    assert config.plant == (("lenses", 0.01), ("agn", 0.02))
    assert json.loads(json.dumps(asdict(config)))["plant"] == [["lenses", 0.01], ["agn", 0.02]]
    assert MockConfig().plant == ()
    for bad in ((("quasars", 0.1),), (("agn", 0.0),), (("agn", 0.6),), (("agn", 0.1), ("agn", 0.2)), ("agn",)):
        with pytest.raises(ValueError):
            MockConfig(plant=bad)
    for name in PLANT_CLASSES:  # the config knows the same classes as the planting module
        MockConfig(plant=((name, 0.1),))


# --- lenses ---------------------------------------------------------------------------------------------------------


def test_lens_arcs_form_a_ring_at_the_einstein_radius():
    centre = np.array([[70.3, 81.6], [75.5, 75.5], [80.0, 72.0]])  # x (column), y (row)
    seeing = np.array([1.0, 1.3, 1.6])
    arcs, truth = lens_arcs(
        np.random.default_rng(3),
        seeing,
        152,
        centre_px=centre,
        axis_ratio=np.array([0.8, 0.5, 1.0]),
        position_angle=np.array([0.3, 1.0, 2.0]),
    )
    assert arcs.shape == (3, 3, 152, 152) and arcs.dtype == np.float32
    assert arcs.min() > -1e-6
    theta = truth["theta_e_arcsec"]
    assert ((theta >= 1.2) & (theta <= 3.0)).all()
    grid = np.arange(152)
    for i in range(3):
        r_arcsec = np.hypot(grid[None, :] - centre[i, 0], grid[:, None] - centre[i, 1]) * PIXEL_SCALE_ARCSEC
        r_band = arcs[i, 1]
        total = r_band.sum()
        # an SIS images a source β off-centre at θ_E ± β, magnified θ_E/β ± 1: flux-weighted radius θ_E + β²/θ_E,
        # which the seeing spreads outwards
        beta = truth["source_offset_arcsec"][i]
        assert 0 < beta <= 0.4 * theta[i]
        mean_r = (r_band * r_arcsec).sum() / total
        assert 0.9 * theta[i] < mean_r < theta[i] + beta**2 / theta[i] + 0.5 * seeing[i]
        assert r_band[np.abs(r_arcsec - theta[i]) < beta + 1.0].sum() > 0.8 * total
        # next to nothing at the centre (no central image; only the PSF's wings reach it)
        assert r_band[r_arcsec < 0.3].sum() < 0.02 * total and r_band[r_arcsec < 0.3].max() < 0.6 * r_band.max()
        # the source's colours: blue (a red lens galaxy has g-r ~ 1-1.8), lensing and the PSF keep them
        g_r, r_z = -2.5 * np.log10(arcs[i, 0].sum() / total), -2.5 * np.log10(total / arcs[i, 2].sum())
        assert 0.19 < g_r < 0.51 and 0.19 < r_z < 0.51
        assert g_r < 1.0
    # the truth is what the pixels hold: magnified, unlensed r 22-23.5
    assert ((truth["magnification"] > 3) & (truth["magnification"] < 60)).all()
    assert ((truth["source_mag_r"] >= 22) & (truth["source_mag_r"] <= 23.5)).all()
    np.testing.assert_allclose(22.5 - 2.5 * np.log10(arcs[:, 1].sum(axis=(1, 2))), truth["arc_mag_r"], atol=1e-4)
    # seeded
    again, _ = lens_arcs(np.random.default_rng(3), np.array([1.0, 1.3, 1.6]), 152, centre, [0.8, 0.5, 1.0], [0.3, 1, 2])
    np.testing.assert_array_equal(again, arcs)


def test_lens_arcs_without_lenstronomy_says_how_to_install_it(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "lenstronomy" or m.startswith("lenstronomy.")] or ["lenstronomy"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(
        InputError, match=r"--plant lenses needs lenstronomy: pip install --no-deps lenstronomy==1\.14\.2"
    ):
        lens_arcs(np.random.default_rng(0), np.array([1.2]))
    from galclip.data.mock.survey import generate_mock

    with pytest.raises(InputError, match="needs lenstronomy"):
        generate_mock(MockConfig(pairs=8, plant=(("lenses", 0.1),)), tmp_path / "m")
    assert not (tmp_path / "m").exists()


# --- AGN ------------------------------------------------------------------------------------------------------------


def _line_flux(wave, flux, centre, half_width):
    """Flux above a straight continuum fitted to the sidebands, within ±half_width Å of centre."""
    core = np.abs(wave - centre) < half_width
    side = (np.abs(wave - centre) > half_width) & (np.abs(wave - centre) < 1.5 * half_width)
    fit = np.polyfit(wave[side], flux[side], 1)
    return np.trapezoid(flux[core] - np.polyval(fit, wave[core]), wave[core])


def test_agn_component_has_broad_balmer_lines_at_the_redshift():
    wave = desi_wavelength()
    z = np.array([0.08, 0.2, 0.35])
    host = np.stack([2.0 + 0.0002 * (wave - 6000), np.full_like(wave, 1.0), 0.5 + 0.0001 * (wave - 3600)])
    agn = agn_component(np.random.default_rng(5), z, wave, host)
    assert agn.shape == (3, len(wave)) and agn.dtype == np.float32
    assert (agn > 0).all()
    for i in range(3):
        ha = HALPHA * (1 + z[i])
        near = np.abs(wave - ha) < 300
        assert abs(wave[near][np.argmax(agn[i, near])] - ha) < 5
        # broad: FWHM 3000-6000 km/s is 66-131 Å rest at Hα; ±3σ of the broadest holds it all
        half = 3 * HALPHA * 6000 / 2.3548 / 299792.458 * (1 + z[i])
        f_ha = _line_flux(wave, agn[i], ha, half)
        f_hb = _line_flux(wave, agn[i], HBETA * (1 + z[i]), half * HBETA / HALPHA)
        assert 2.6 < f_ha / f_hb < 3.4
        # visible but not dominant: rest EW 100-300 Å against the host continuum, power law 15-40% of it at 5100 Å
        host_ha = np.interp(ha, wave, host[i])
        assert 90 < f_ha / host_ha / (1 + z[i]) < 320
        at5100 = np.argmin(np.abs(wave - 5100 * (1 + z[i])))
        assert 0.14 < agn[i, at5100] / host[i, at5100] < 0.41
        # f_λ ∝ λ_rest^-1.5 between the lines
        a, b = (np.argmin(np.abs(wave - lam * (1 + z[i]))) for lam in (4000.0, 5600.0))
        if wave[a] > wave[0] + 50:
            np.testing.assert_allclose(agn[i, a] / agn[i, b], (4000 / 5600) ** -1.5, rtol=0.03)


# --- the planted mock -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mocks(tmp_path_factory):
    """The same small mock without and with planting: (plain folder, planted folder, the planted summary)."""
    from galclip.data.mock.survey import generate_mock

    root = tmp_path_factory.mktemp("plant")
    plain = generate_mock(MockConfig(**SMALL), root / "plain")
    assert "planted" not in plain and not (root / "plain" / "planted.csv").exists()
    summary = generate_mock(MockConfig(**SMALL, plant=PLANT), root / "planted")
    return root / "plain", root / "planted", summary


def _planted_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_planted_mock_records_the_truth(mocks):
    _, planted, summary = mocks
    assert summary["planted"] == {"lenses": 3, "agn": 3}
    assert summary["planted_file"] == str(planted / "planted.csv")
    rows = _planted_rows(planted / "planted.csv")
    assert list(rows[0]) == ["targetid", "class", "theta_e_arcsec"]
    assert [r["class"] for r in rows] == ["lenses"] * 3 + ["agn"] * 3
    ids = set(SurveyReader(planted).targetids().tolist())
    assert all(int(r["targetid"]) in ids for r in rows) and len({r["targetid"] for r in rows}) == 6
    assert all(1.2 <= float(r["theta_e_arcsec"]) <= 3.0 for r in rows if r["class"] == "lenses")
    assert all(r["theta_e_arcsec"] == "" for r in rows if r["class"] == "agn")
    with h5py.File(planted / "survey.h5") as f:
        assert json.loads(f.attrs["config"])["plant"] == [["lenses", 0.05], ["agn", 0.05]]


def test_planting_changes_only_the_planted_galaxies(mocks):
    plain, planted, _ = mocks
    a, b = SurveyReader(plain), SurveyReader(planted)
    ids = a.targetids()
    np.testing.assert_array_equal(ids, b.targetids())
    pa, pb = a.read(0, len(ids)), b.read(0, len(ids))
    kind = {int(r["targetid"]): r["class"] for r in _planted_rows(planted / "planted.csv")}
    lens = np.array([kind.get(int(t)) == "lenses" for t in ids])
    agn = np.array([kind.get(int(t)) == "agn" for t in ids])
    other = ~(lens | agn)
    np.testing.assert_array_equal(pa.image[other], pb.image[other])
    np.testing.assert_array_equal(pa.spectrum[other], pb.spectrum[other])
    # a lens adds light to the image only, an AGN to the spectrum only
    assert all((pb.image[i] - pa.image[i]).sum() > 0.5 for i in np.flatnonzero(lens))
    np.testing.assert_array_equal(pa.spectrum[lens], pb.spectrum[lens])
    assert all((pb.spectrum[i] - pa.spectrum[i]).mean() > 0 for i in np.flatnonzero(agn))
    np.testing.assert_array_equal(pa.image[agn], pb.image[agn])
    with h5py.File(plain / "provabgs.h5") as fa, h5py.File(planted / "provabgs.h5") as fb:
        for name in fa:
            np.testing.assert_array_equal(fa[name][()], fb[name][()])


def test_an_existing_planted_csv_is_refused_without_overwrite(tmp_path):
    from galclip.data.mock.survey import generate_mock

    out = tmp_path / "mine"
    out.mkdir()
    (out / "planted.csv").write_text("my own truth\n")
    config = MockConfig(pairs=8, seed=2, batch_size=8, n_groups=1, plant=(("lenses", 0.2),))
    for plant in (config, MockConfig(pairs=8, seed=2, batch_size=8, n_groups=1)):
        with pytest.raises(InputError, match=r"planted\.csv: already exists.*--overwrite"):
            generate_mock(plant, out)
    assert (out / "planted.csv").read_text() == "my own truth\n" and not (out / "survey.h5").exists()
    summary = generate_mock(config, out, overwrite=True)
    assert summary["planted"] == {"lenses": 2}
    assert [r["class"] for r in _planted_rows(out / "planted.csv")] == ["lenses", "lenses"]
    # a mock without planting over it removes the old truth, which would not describe the new survey
    generate_mock(MockConfig(pairs=8, seed=2, batch_size=8, n_groups=1), out, overwrite=True)
    assert not (out / "planted.csv").exists()


def test_planting_needs_the_modality_it_shows_in(tmp_path):
    from galclip.data.mock.survey import generate_mock

    with pytest.raises(InputError, match="--plant agn"):
        generate_mock(MockConfig(pairs=8, modality="image", plant=(("agn", 0.1),)), tmp_path / "a")
    with pytest.raises(InputError, match="--plant lenses"):
        generate_mock(MockConfig(pairs=8, modality="spectrum", plant=(("lenses", 0.1),)), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_mock_cli_plants_and_refuses_a_bad_plant(tmp_path):
    import csv

    from click.testing import CliRunner

    from galclip.cli import main

    out = tmp_path / "m"
    res = CliRunner().invoke(
        main, ["-q", "mock", "--pairs", "40", "--plant", "lenses=0.05,agn=0.05", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "planted: 2 lenses, 2 agn" in res.output
    rows = list(csv.DictReader(open(out / "planted.csv")))
    assert sorted(r["class"] for r in rows) == ["agn", "agn", "lenses", "lenses"]
    res = CliRunner().invoke(
        main, ["-q", "mock", "--pairs", "40", "--plant", "lenses=0.9", "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 1 and "--plant" in res.output and not (tmp_path / "x").exists()
