"""Sky matching of image-only and spectrum-only sources (galclip.data.match), checked against a brute-force loop."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest

from galclip.data.match import MatchedSurvey, contiguous_runs, match_rows
from galclip.data.sources import SurveySource, position_targetid
from galclip.data.survey import SurveyBatch
from galclip.errors import InputError

RADIUS = 1.0  # arcsec


# ---------------------------------------------------------------- brute-force reference


def separation_arcsec(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    """Great-circle separation by the haversine formula, degrees in, arcsec out."""
    p1, p2 = math.radians(dec1), math.radians(dec2)
    dp, dl = p2 - p1, math.radians(ra2 - ra1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return math.degrees(2 * math.asin(math.sqrt(min(1.0, h)))) * 3600


def brute_force(image_ids, image_ra, image_dec, spectrum_ids, spectrum_ra, spectrum_dec, radius):
    """The matching rule by loops over all pairs: (pairs {(i, s): sep}, image_only, spectrum_only, ambiguous
    {(side, row): frozenset(candidates)})."""
    pairs: dict[tuple[int, int], float] = {}
    image_list, spectrum_list = list(image_ids), list(spectrum_ids)
    for i, tid in enumerate(image_list):
        if tid >= 0 and image_list.count(tid) == 1 and spectrum_list.count(tid) == 1:
            pairs[(i, spectrum_list.index(tid))] = 0.0
    id_images = {i for i, _ in pairs}
    id_spectra = {s for _, s in pairs}
    cand_i: dict[int, dict[int, float]] = {i: {} for i in range(len(image_list))}
    cand_s: dict[int, dict[int, float]] = {s: {} for s in range(len(spectrum_list))}
    for i in range(len(image_list)):
        if i in id_images or not (np.isfinite(image_ra[i]) and np.isfinite(image_dec[i])):
            continue
        for s in range(len(spectrum_list)):
            if s in id_spectra or not (np.isfinite(spectrum_ra[s]) and np.isfinite(spectrum_dec[s])):
                continue
            sep = separation_arcsec(image_ra[i], image_dec[i], spectrum_ra[s], spectrum_dec[s])
            if sep <= radius:
                cand_i[i][s] = sep
                cand_s[s][i] = sep
    ambiguous = {("image", i): frozenset(c) for i, c in cand_i.items() if len(c) >= 2}
    ambiguous |= {("spectrum", s): frozenset(c) for s, c in cand_s.items() if len(c) >= 2}
    grouped_i = {i for (side, i) in ambiguous if side == "image"}
    grouped_i |= {i for (side, _), c in ambiguous.items() if side == "spectrum" for i in c}
    grouped_s = {s for (side, s) in ambiguous if side == "spectrum"}
    grouped_s |= {s for (side, _), c in ambiguous.items() if side == "image" for s in c}
    for i, c in cand_i.items():
        if len(c) == 1:
            ((s, sep),) = c.items()
            if len(cand_s[s]) == 1:
                pairs[(i, s)] = sep
    paired_i = {i for i, _ in pairs}
    paired_s = {s for _, s in pairs}
    image_only = sorted(set(range(len(image_list))) - paired_i - grouped_i)
    spectrum_only = sorted(set(range(len(spectrum_list))) - paired_s - grouped_s)
    return pairs, image_only, spectrum_only, ambiguous


def offset(ra: float, dec: float, arcsec: float, rng: np.random.Generator) -> tuple[float, float]:
    """A point ``arcsec`` away from (ra, dec) in a random direction (small-angle)."""
    angle = rng.uniform(0, 2 * np.pi)
    d = arcsec / 3600
    return ra + d * np.cos(angle) / np.cos(np.radians(dec)), dec + d * np.sin(angle)


def random_catalogues(seed: int):
    """Images and spectra on a 0.3 deg patch: pairs within the radius, near misses beyond it, shared TARGETIDs
    (some far apart), unrelated rows, NaN positions and ambiguous groups. (ids, ra, dec) per side."""
    rng = np.random.default_rng(seed)
    real = iter(rng.choice(10**15, size=2000, replace=False) + 1)
    images: list[tuple[int | None, float, float]] = []  # id None: a position id
    spectra: list[tuple[int, float, float]] = []

    def sky() -> tuple[float, float]:
        return float(rng.uniform(150.0, 150.3)), float(rng.uniform(2.0, 2.3))

    for _ in range(60):  # pairs within the radius, image without a TARGETID
        ra, dec = sky()
        images.append((None, ra, dec))
        spectra.append((next(real), *offset(ra, dec, rng.uniform(0.05, 0.9) * RADIUS, rng)))
    for _ in range(30):  # near misses beyond the radius
        ra, dec = sky()
        images.append((None, ra, dec))
        spectra.append((next(real), *offset(ra, dec, rng.uniform(1.2, 4.0) * RADIUS, rng)))
    for _ in range(30):  # a shared TARGETID, near or far
        tid, (ra, dec) = next(real), sky()
        images.append((tid, ra, dec))
        spectra.append((tid, *offset(ra, dec, rng.uniform(0.0, 30.0), rng)))
    for _ in range(10):  # real but different ids within the radius: paired by position
        ra, dec = sky()
        images.append((next(real), ra, dec))
        spectra.append((next(real), *offset(ra, dec, 0.5 * RADIUS, rng)))
    for _ in range(15):
        images.append((None, *sky()))
        spectra.append((next(real), *sky()))
    for _ in range(5):  # NaN positions: never paired by position
        ra, dec = sky()
        images.append((next(real), np.nan, dec))
        spectra.append((next(real), ra, dec))
        spectra.append((next(real), np.nan, np.nan))
    for _ in range(4):  # an image with two spectra inside the radius
        ra, dec = sky()
        images.append((None, ra, dec))
        spectra.append((next(real), *offset(ra, dec, 0.3 * RADIUS, rng)))
        spectra.append((next(real), *offset(ra, dec, 0.7 * RADIUS, rng)))
    for _ in range(4):  # a spectrum with two images inside the radius
        ra, dec = sky()
        spectra.append((next(real), ra, dec))
        images.append((None, *offset(ra, dec, 0.2 * RADIUS, rng)))
        images.append((None, *offset(ra, dec, 0.8 * RADIUS, rng)))

    def arrays(rows, perm):
        rows = [rows[k] for k in perm]
        ra = np.array([r[1] for r in rows], np.float64)
        dec = np.array([r[2] for r in rows], np.float64)
        ids = np.array([-1 if r[0] is None else r[0] for r in rows], np.int64)
        none = np.array([r[0] is None for r in rows])
        ids[none] = position_targetid(ra[none], dec[none])
        return ids, ra, dec

    return (*arrays(images, rng.permutation(len(images))), *arrays(spectra, rng.permutation(len(spectra))))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_match_rows_equals_brute_force(seed):
    cats = random_catalogues(seed)
    m = match_rows(*cats, RADIUS)
    pairs, image_only, spectrum_only, ambiguous = brute_force(*cats, RADIUS)

    assert {(int(i), int(s)) for i, s in zip(m.image_rows, m.spectrum_rows)} == set(pairs)
    assert np.all(np.diff(m.spectrum_rows) > 0)  # ordered by spectrum row
    expected_sep = np.array([pairs[(int(i), int(s))] for i, s in zip(m.image_rows, m.spectrum_rows)])
    np.testing.assert_allclose(m.separation_arcsec, expected_sep, atol=1e-6)
    assert m.image_only.tolist() == image_only
    assert m.spectrum_only.tolist() == spectrum_only
    assert {(a.side, a.row): frozenset(a.candidates.tolist()) for a in m.ambiguous} == ambiguous
    for a in m.ambiguous:
        assert np.all(np.diff(a.separations_arcsec) >= 0)

    counts = m.counts()
    assert counts["by_targetid"] == 30 and counts["ambiguous"] == 8
    assert counts["matched"] == len(pairs) == counts["by_targetid"] + counts["by_position"]
    # every row is paired, unmatched, or in an ambiguous group: exactly one of them
    n_image, n_spectrum = cats[0].size, cats[3].size
    for side, paired, only, n in (
        ("image", m.image_rows, m.image_only, n_image),
        ("spectrum", m.spectrum_rows, m.spectrum_only, n_spectrum),
    ):
        rows = np.concatenate([paired, only, m.ambiguous_rows(side)])
        assert np.array_equal(np.sort(rows), np.arange(n))


def test_targetid_wins_over_position():
    # image 0 and spectrum 0 share TARGETID 7 though 20″ apart; image 1 (no TARGETID) sits on spectrum 0
    image_ids = np.array([7, position_targetid(10.0, 5.0)], np.int64)
    m = match_rows(
        image_ids,
        np.array([10.0 + 20 / 3600, 10.0]),
        np.array([5.0, 5.0]),
        np.array([7], np.int64),
        np.array([10.0]),
        np.array([5.0]),
        RADIUS,
    )
    assert m.image_rows.tolist() == [0] and m.spectrum_rows.tolist() == [0]
    assert m.by_id == 1 and m.separation_arcsec.tolist() == [0.0]
    assert m.image_only.tolist() == [1] and not m.ambiguous


def test_ra_wraps_at_zero():
    image_ra = np.array([359.99995, 359.9999, 180.0])
    image_dec = np.array([10.0, -30.0, 0.0])
    spectrum_ra = np.array([0.00005, 0.0002, 0.5])
    spectrum_dec = np.array([10.0, -30.0, 0.0])
    ids = position_targetid(image_ra, image_dec)
    m = match_rows(ids, image_ra, image_dec, np.array([1, 2, 3]), spectrum_ra, spectrum_dec, RADIUS)
    assert m.image_rows.tolist() == [0, 1] and m.spectrum_rows.tolist() == [0, 1]
    expected = [separation_arcsec(image_ra[k], image_dec[k], spectrum_ra[k], spectrum_dec[k]) for k in (0, 1)]
    np.testing.assert_allclose(m.separation_arcsec, expected, atol=1e-6)
    assert max(expected) < RADIUS and m.image_only.tolist() == [2] and m.spectrum_only.tolist() == [2]


def test_nan_positions_never_match():
    nan = np.nan
    m = match_rows(
        np.array([-5, -6, 11], np.int64),
        np.array([nan, 20.0, 20.0]),
        np.array([nan, nan, 1.0]),
        np.array([21, 22, 23], np.int64),
        np.array([nan, nan, 20.0]),
        np.array([nan, 1.0, nan]),
        RADIUS,
    )
    assert m.n_pairs == 0
    assert m.image_only.tolist() == [0, 1, 2] and m.spectrum_only.tolist() == [0, 1, 2]


# ---------------------------------------------------------------- MatchedSurvey over in-memory sources


class FakeSource:
    """A SurveySource of numpy arrays. Images hold their row number in every pixel, spectra row + 0.5 at every
    pixel and ivar row + 0.25; every read is recorded."""

    def __init__(self, layout, modality, ids, ra, dec, redshift=None):
        self.layout = layout
        self.files = [Path(f"/fake/{layout}.fits")]
        self.modalities = (modality,)
        self.n_rows = len(ids)
        self._ids = np.asarray(ids, np.int64)
        self._ra, self._dec = np.asarray(ra, np.float64), np.asarray(dec, np.float64)
        self._z = np.full(self.n_rows, np.nan, np.float32) if redshift is None else np.asarray(redshift, np.float32)
        self.reads: list[tuple[int, int]] = []
        self.closed = False

    def targetids(self):
        return self._ids.copy()

    def redshifts(self):
        return self._z.copy()

    def positions(self):
        return self._ra.copy(), self._dec.copy()

    def read(self, start, stop):
        assert 0 <= start < stop <= self.n_rows
        self.reads.append((start, stop))
        rows = np.arange(start, stop, dtype=np.float32)
        image = "image" in self.modalities
        return SurveyBatch(
            image=np.broadcast_to(rows[:, None, None, None], (stop - start, 2, 2, 3)).copy() if image else None,
            spectrum=None if image else np.repeat(rows[:, None] + 0.5, 5, axis=1),
            redshift=self._z[start:stop],
            targetid=self._ids[start:stop],
            spectrum_ivar=None if image else np.repeat(rows[:, None] + 0.25, 5, axis=1),
            ra=self._ra[start:stop],
            dec=self._dec[start:stop],
        )

    def locate(self, row):
        return f"{self.files[0]}:HDU[{row}]"

    def fingerprint(self):
        return {"files": [str(self.files[0])], "bytes": [123], "n_rows": self.n_rows}

    def content(self):
        return [{"file": str(self.files[0]), "bytes": 123, "n_rows": self.n_rows}]

    def close(self):
        self.closed = True


# spectrum row -> image row of its pair; spectra 8 and 9 and images 4, 8, 10 and 11 have no counterpart
PAIRED_IMAGE = [5, 6, 7, 0, 1, 2, 9, 3]


def fake_pair(**kw) -> tuple[FakeSource, FakeSource]:
    """12 images on a grid 60″ apart (no TARGETIDs, but image 3 carries TARGETID 900 and image 2 TARGETID 800), 10
    spectra: 8 at 0.3″ from images PAIRED_IMAGE (spectrum 3 at no position, paired by TARGETID 900; spectrum 5 with
    only a position id), 2 far from every image."""
    rng = np.random.default_rng(4)
    image_ra = 40.0 + np.arange(12) * 60 / 3600
    image_dec = np.full(12, -5.0)
    image_ids = position_targetid(image_ra, image_dec)
    image_ids[3], image_ids[2] = 900, 800
    spectrum_ra, spectrum_dec = np.zeros(10), np.zeros(10)
    for s, i in enumerate(PAIRED_IMAGE):
        spectrum_ra[s], spectrum_dec[s] = offset(image_ra[i], image_dec[i], 0.3, rng)
    spectrum_ra[8:], spectrum_dec[8:] = [41.0, 42.0], [-5.0, -5.0]
    spectrum_ids = np.arange(100, 110, dtype=np.int64)
    spectrum_ids[7] = 900  # spectrum 7 pairs with image 3 by TARGETID
    spectrum_ra[7] = spectrum_dec[7] = np.nan
    spectrum_ids[5] = position_targetid(spectrum_ra[5], spectrum_dec[5])
    redshift = np.linspace(0.1, 1.0, 10)
    images = FakeSource("legacysurvey-fits", "image", image_ids, image_ra, image_dec, **kw)
    spectra = FakeSource("desi-fits", "spectrum", spectrum_ids, spectrum_ra, spectrum_dec, redshift)
    return images, spectra


def test_matched_survey_reads_pairs_in_spectrum_order():
    images, spectra = fake_pair()
    survey = MatchedSurvey(images, spectra, RADIUS)
    assert isinstance(survey, SurveySource)
    assert survey.layout == "legacysurvey-fits+desi-fits" and survey.modalities == ("image", "spectrum")
    assert survey.files == images.files + spectra.files and survey.n_rows == 8
    assert survey.match.counts() == {
        "matched": 8,
        "by_targetid": 1,
        "by_position": 7,
        "image_only": 4,
        "spectrum_only": 2,
        "ambiguous": 0,
    }

    batch = survey.read(0, 8)
    assert batch.image[:, 0, 0, 0].tolist() == PAIRED_IMAGE  # images reordered to the pairs' order
    assert batch.spectrum[:, 0].tolist() == [s + 0.5 for s in range(8)]
    assert batch.spectrum_ivar[:, 0].tolist() == [s + 0.25 for s in range(8)]
    assert batch.image.shape == (8, 2, 2, 3) and batch.spectrum.shape == (8, 5)
    expected_ids = np.arange(100, 108)
    expected_ids[5], expected_ids[7] = 800, 900  # position id on the spectrum side: the image's TARGETID
    assert batch.targetid.tolist() == expected_ids.tolist() == survey.targetids().tolist()
    np.testing.assert_allclose(batch.redshift, np.linspace(0.1, 1.0, 10)[:8].astype(np.float32))
    img_ra, img_dec = images.positions()
    spec_ra, spec_dec = spectra.positions()
    np.testing.assert_array_equal(batch.ra[:7], spec_ra[:7])
    assert batch.ra[7] == img_ra[3] and batch.dec[7] == img_dec[3]  # spectrum 7 has no position: the image's
    assert np.array_equal(survey.positions()[0], batch.ra)

    # contiguous runs, not row by row: images 5,6,7,0,1,2,9,3 are read as [0, 4), [5, 8), [9, 10)
    assert sorted(images.reads) == [(0, 4), (5, 8), (9, 10)]
    assert spectra.reads == [(0, 8)]

    images.reads.clear()
    part = survey.read(2, 6)
    assert part.image[:, 0, 0, 0].tolist() == PAIRED_IMAGE[2:6]
    assert part.spectrum[:, 0].tolist() == [2.5, 3.5, 4.5, 5.5]
    assert part.targetid.tolist() == expected_ids[2:6].tolist()
    assert sorted(images.reads) == [(0, 3), (7, 8)]
    with pytest.raises(IndexError):
        survey.read(5, 9)


def test_matched_survey_interface():
    images, spectra = fake_pair()
    survey = MatchedSurvey(images, spectra, 1.5)
    assert survey.locate(0) == "image /fake/legacysurvey-fits.fits:HDU[5]; spectrum /fake/desi-fits.fits:HDU[0]"
    fp = survey.fingerprint()
    assert fp["layout"] == survey.layout and fp["match_radius_arcsec"] == 1.5 and fp["n_rows"] == 8
    assert fp["images"] == images.fingerprint() and fp["spectra"] == spectra.fingerprint()
    assert fp["files"] == [str(images.files[0]), str(spectra.files[0])]
    assert survey.content() == images.content() + spectra.content()

    table = survey.unmatched_table()
    assert table["side"].tolist() == ["image"] * 4 + ["spectrum"] * 2
    assert table["targetid"].tolist() == [*images.targetids()[[4, 8, 10, 11]], 108, 109]
    assert table["ra"][-2:].tolist() == [41.0, 42.0] and table["dec"][-1] == -5.0
    assert table["where"][0] == images.locate(4) and table["where"][-1] == spectra.locate(9)
    assert {len(v) for v in table.values()} == {6}

    clone = pickle.loads(pickle.dumps(survey))
    a, b = clone.read(0, 8), survey.read(0, 8)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.targetid, b.targetid)
    survey.close()
    assert images.closed and spectra.closed


def test_ambiguous_image_refused_naming_it():
    images, spectra = fake_pair()
    # a second spectrum 0.7″ from image 5, whose own spectrum (row 0) lies 0.3″ away
    ra, dec = images.positions()
    spectra._ra[9], spectra._dec[9] = ra[5], dec[5] + 0.7 / 3600
    with pytest.raises(InputError) as err:
        MatchedSurvey(images, spectra, RADIUS)
    msg = str(err.value)
    assert "\n" not in msg and "1 galaxy has" in msg
    assert f"ra {ra[5]:.6f}, dec {dec[5]:.6f}" in msg  # the image has no TARGETID: named by its position
    assert "TARGETID 100" in msg and "TARGETID 109" in msg
    assert "0.30″" in msg and "0.70″" in msg
    assert "pass a smaller --match-radius (the two candidates are 0.30″ and 0.70″ away), or remove the duplicate" in msg

    # at a radius between the two, the second spectrum is beyond it: no ambiguity
    assert MatchedSurvey(images, spectra, 0.5).n_rows == 8


def test_ambiguous_spectrum_refused_naming_it():
    images, spectra = fake_pair()
    images._ra[11], images._dec[11] = spectra._ra[1], spectra._dec[1] + 0.6 / 3600
    with pytest.raises(InputError, match=r"the spectrum TARGETID 101 .* has the images .* at 0\.\d\d″ and"):
        MatchedSurvey(images, spectra, RADIUS)


def test_zero_matches_refused():
    ids = np.array([1, 2], np.int64)
    images = FakeSource("legacysurvey-fits", "image", -ids, [10.0, 11.0], [0.0, 0.0])
    spectra = FakeSource("desi-fits", "spectrum", ids, [10.0 + 12 / 3600, 30.0], [0.0, 0.0])
    with pytest.raises(InputError) as err:
        MatchedSurvey(images, spectra, RADIUS)
    msg = str(err.value)
    assert "/fake/legacysurvey-fits.fits" in msg and "/fake/desi-fits.fits" in msg
    assert "12.00″ apart" in msg and "raise --match-radius" in msg and "check the positions" in msg


def test_off_sky_declination_refused():
    images, spectra = fake_pair()
    spectra._dec[2] = 95.0
    with pytest.raises(InputError, match=r"desi-fits\.fits:HDU\[2\]: Dec 95"):
        MatchedSurvey(images, spectra, RADIUS)


def test_contiguous_runs():
    assert contiguous_runs(np.array([0, 1, 2, 5, 7, 8], np.int64)) == [(0, 3), (5, 6), (7, 9)]
    assert contiguous_runs(np.zeros(0, np.int64)) == []
