"""The search service: its JSON API against ``galclip search --json`` and numpy brute force, a corpus of
bad requests, start-up refusals, read-only access, and a real browser driving the page."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from galclip.config import HeadConfig

ARTIFACTS = Path(
    os.environ.get("GALCLIP_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "build" / "test-artifacts")
)


def _snapshot(*paths: Path) -> dict[str, str]:
    out = {}
    for root in paths:
        for p in sorted(x for x in ([root] if root.is_file() else root.rglob("*")) if x.is_file()):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def served(tiny_mock, tiny_store, tmp_path_factory):
    """Heads and an index (with its map) over the tiny store; the service over them."""
    from galclip.heads.train import train_heads
    from galclip.index.build import build_indexes
    from galclip.serve.app import load_service

    root = tmp_path_factory.mktemp("serve")
    train_heads(tiny_store, root / "heads", HeadConfig(epochs=2, batch_size=16), progress=False)
    build_indexes(tiny_store, root / "heads", root / "index", embedding_map=True)
    return root, load_service(root / "index")


@pytest.fixture(scope="module")
def client(served):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's TestClient notes its httpx dependency
        from fastapi.testclient import TestClient
    from galclip.serve.app import create_app

    return TestClient(create_app(served[1]))


def _cli_search(index: Path, *args: str) -> dict:
    from click.testing import CliRunner

    from galclip.cli import main

    result = CliRunner().invoke(main, ["-q", "search", str(index), *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize(
    "query,target", [("image", "image"), ("image", "spectrum"), ("spectrum", "image"), ("spectrum", "spectrum")]
)
def test_search_equals_the_cli_and_brute_force(served, client, query, target):
    root, service = served
    index = service.index
    tid = int(index.rows["targetid"][9])
    got = client.get(f"/api/search?targetid={tid}&query={query}&target={target}&k=6")
    assert got.status_code == 200, got.text
    body = got.json()
    assert body == _cli_search(root / "index", "--targetid", str(tid), "--query", query, "--target", target, "-k", "6")
    sims = np.asarray(index.embeddings[target]) @ np.asarray(index.embeddings[query][9])
    order = [i for i in np.argsort(-sims, kind="stable") if not (query == target and i == 9)][:6]
    assert [n["targetid"] for n in body["neighbours"]] == index.rows["targetid"][order].tolist()
    np.testing.assert_allclose([n["similarity"] for n in body["neighbours"]], sims[order], atol=1e-5)
    # the zero-shot prediction: 16 labelled train-split galaxies of the query's modality, by a loop
    assert _flat(body["prediction"]) == pytest.approx(_flat(_brute_force_prediction(index, 9, query)), abs=1e-9)


def _flat(record: dict, prefix: str = "") -> dict:
    """A nested prediction record as {"redshift.value": ..., "similarity": ...}, for pytest.approx."""
    out = {}
    for key, value in record.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


def _brute_force_prediction(index, pos: int, modality: str) -> dict:
    """The zero-shot prediction of indexed galaxy ``pos`` by a Python loop: inverse-distance weights over its 16
    nearest labelled train-split galaxies in its own modality (itself left out), weighted 16th/84th percentiles
    stretched about their centre by the reference's split-conformal factor (recomputed in tests/test_predict.py)."""
    rows, emb = index.rows, np.asarray(index.embeddings[modality], np.float64)
    ref = [
        i
        for i in range(len(index))
        if rows["split"][i] == 0 and np.isfinite(rows["redshift"][i]) and np.isfinite(rows["log_mstar"][i]) and i != pos
    ]
    dist = sorted((float(np.sqrt(np.sum((emb[i] - emb[pos]) ** 2))), i) for i in ref)[:16]
    out = {}
    stretch = index.reference(modality).stretch(16)
    for label in index.label_names:
        w = [1 / d for d, _ in dist]
        y = [float(rows[label][i]) for _, i in dist]
        pairs = sorted(zip(y, w))
        cum, total, q = 0.0, sum(w), {}
        for v, wi in pairs:
            cum += wi
            for level in (0.16, 0.84):
                if level not in q and cum / total >= level - 1e-12:
                    q[level] = v
        mean, c, h = sum(a * b for a, b in zip(w, y)) / total, (q[0.16] + q[0.84]) / 2, (q[0.84] - q[0.16]) / 2
        h = max(h, 1e-9)
        out[label] = {"value": mean, "lo": min(c - stretch[label] * h, mean), "hi": max(c + stretch[label] * h, mean)}
    out.update(similarity=1 - dist[0][0] ** 2 / 2, k=16)
    out["ood"] = out["similarity"] < index.reference(modality).ood_threshold
    return out


def test_vector_search_csv_galaxy_image_spectrum_map(served, client):
    _, service = served
    index = service.index
    vector = np.asarray(index.embeddings["spectrum"][4])
    got = client.post("/api/search", json={"embedding": vector.tolist(), "target": "spectrum", "k": 3}).json()
    assert got["neighbours"][0]["targetid"] == int(index.rows["targetid"][4])  # itself, nearest
    assert got["neighbours"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    tid = int(index.rows["targetid"][2])
    csv_text = client.get(f"/api/search.csv?targetid={tid}&query=image&target=spectrum&k=4")
    assert (
        csv_text.headers["content-type"].startswith("text/csv")
        and "attachment" in csv_text.headers["content-disposition"]
    )
    rows = csv_text.text.strip().split("\n")
    assert rows[0].startswith("query_targetid,query_modality,target_modality,rank,targetid") and len(rows) == 5
    search = client.get(f"/api/search?targetid={tid}&query=image&target=spectrum&k=4").json()
    assert [int(r.split(",")[4]) for r in rows[1:]] == [n["targetid"] for n in search["neighbours"]]
    galaxy = client.get(f"/api/galaxy/{tid}").json()
    assert galaxy["indexed"] and galaxy["partner_indexed"] and galaxy["split"] in ("train", "selection", "test")
    assert galaxy["survey"]["file"].endswith("survey.h5") and galaxy["survey"]["group"] != ""
    png = client.get(f"/api/image/{tid}.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    import io

    from PIL import Image

    assert Image.open(io.BytesIO(png.content)).size == (96, 96)  # the store's 96-pixel centre crop
    spectrum = client.get(f"/api/spectrum/{tid}?bins=50").json()
    assert len(spectrum["wavelength"]) == len(spectrum["flux"]) == 50
    assert 3600 < spectrum["wavelength"][0] < spectrum["wavelength"][-1] < 9824
    from galclip.data.survey import SurveyReader

    with SurveyReader(service.galaxies.reader.files) as reader:  # the bins average the file's own fluxes
        row = int(np.flatnonzero(reader.targetids() == tid)[0])
        flux = reader.read(row, row + 1).spectrum[0].astype(np.float64)
    edges = np.linspace(0, len(flux), 51).round().astype(int)
    np.testing.assert_allclose(spectrum["flux"], [flux[a:b].mean() for a, b in zip(edges[:-1], edges[1:])], atol=1e-4)
    emap = client.get("/api/map").json()
    assert len(emap["x"]) == len(emap["targetid"]) == len(index) and emap["targetid"][0] == str(
        index.rows["targetid"][0]
    )
    np.testing.assert_allclose(emap["x"], np.load(served[0] / "index" / "map.npy")[:, 0], atol=1e-3)
    assert int(client.get("/api/random").json()["targetid"]) in set(index.rows["targetid"].tolist())
    assert client.get("/api/health").json()["status"] == "ok"


@pytest.fixture(scope="module")
def cutouts(tiny_mock, tmp_path_factory) -> Path:
    """The tiny mock's galaxies as Legacy Survey cutout FITS (one galaxy per file) and DESI coadds."""
    from galclip.data.mock.layouts import convert

    out = tmp_path_factory.mktemp("layouts")
    convert(tiny_mock / "survey.h5", out, "legacysurvey-fits")
    return out


def test_position_filters_and_an_uploaded_cutout_answer_as_the_index_does(served, client, cutouts, tiny_mock):
    from galclip.index.query import Filters
    from galclip.serve import app as app_module

    _, service = served
    index = service.index
    tid = int(index.rows["targetid"][5])
    ra, dec = float(index.rows["ra"][5]), float(index.rows["dec"][5])
    by_position = client.get(f"/api/search?ra={ra}&dec={dec}&radius=2&query=both&target=image&k=4").json()
    assert by_position["query"]["targetid"] == tid and by_position["query"]["position"]["separation_arcsec"] < 1e-3
    by_id = index.search(tid, query="both", target="image", k=4)
    assert by_position["neighbours"] == by_id["neighbours"]
    z = index.rows["redshift"]
    lo, hi = (float(v) for v in np.nanpercentile(z, [20, 60]))
    window = client.get(f"/api/search?targetid={tid}&target=spectrum&k=5&filter=redshift={lo}:{hi}&dedup=0").json()
    assert window == index.search(
        tid, target="spectrum", k=5, filters=Filters.parse([f"redshift={lo}:{hi}"]), dedup_arcsec=0
    )
    assert all(lo <= n["redshift"] <= hi for n in window["neighbours"]) and len(window["neighbours"]) == 5
    empty = client.get(f"/api/search?targetid={tid}&filter=redshift=7:8")
    assert empty.status_code == 200 and empty.json()["neighbours"] == []
    assert "no indexed galaxy passes" in empty.json()["filters"]["reason"]
    csv_rows = client.get(f"/api/search.csv?ra={ra}&dec={dec}&k=3").text.strip().split("\n")
    assert csv_rows[0].endswith("has_image,has_spectrum,is_partner") and csv_rows[1].startswith(str(tid))
    # an uploaded cutout: embedded with the store's encoders and heads, its own galaxy comes first
    files = sorted((cutouts / "cutouts").glob("*.fits"))
    from galclip.data.sources import open_survey

    with open_survey(files[0], require=()) as reader:
        batch = reader.read(0, 1)
    upload_ra, upload_dec = float(batch.ra[0]), float(batch.dec[0])
    own = int(np.argmin((index.rows["ra"] - upload_ra) ** 2 + (index.rows["dec"] - upload_dec) ** 2))
    with open(files[0], "rb") as f:
        got = client.post("/api/search/file", files={"file": (files[0].name, f, "application/fits")}, data={"k": "3"})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["query"]["source"] == f"upload: {files[0].name}" and body["query"]["modality"] == "image"
    assert body["neighbours"][0]["targetid"] == int(index.rows["targetid"][own])
    assert body["neighbours"][0]["similarity"] == pytest.approx(1.0, abs=1e-3)
    # bad uploads: named, 4xx, and nothing of them is kept
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("galclip-upload-*"))
    several = client.post("/api/search/file", files={"file": ("survey.h5", (tiny_mock / "survey.h5").read_bytes())})
    assert several.status_code == 422 and "holds 64 galaxies" in several.json()["error"]
    text = client.post("/api/search/file", files={"file": ("notes.txt", b"hello, not a survey file")})
    assert text.status_code == 422 and "notes.txt" in text.json()["error"]
    nothing = client.post("/api/search/file", data={"k": "3"})
    assert nothing.status_code == 422 and "file" in nothing.json()["error"]
    no_spectrum = client.post(
        "/api/search/file", files={"file": (files[0].name, files[0].read_bytes())}, data={"query": "spectrum"}
    )
    assert no_spectrum.status_code == 422 and "holds no spectrum" in no_spectrum.json()["error"]
    old = app_module.UPLOAD_MAX_BYTES
    app_module.UPLOAD_MAX_BYTES = 1000
    try:
        big = client.post("/api/search/file", files={"file": (files[0].name, files[0].read_bytes())})
    finally:
        app_module.UPLOAD_MAX_BYTES = old
    assert big.status_code == 413 and "larger than" in big.json()["error"]
    assert set(Path(tempfile.gettempdir()).glob("galclip-upload-*")) == before


def test_page_and_schema_are_served_offline(client):
    page = client.get("/")
    assert page.status_code == 200 and "galclip" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    from galclip.serve.app import STATIC

    for f in STATIC.iterdir():  # no CDN, font or remote call anywhere in the page
        text = f.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, f
    assert client.get("/openapi.json").json()["info"]["title"] == "galclip search"
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404


def bad_requests(tid: int) -> list[tuple[str, str, dict | str | None, int, str]]:
    """(method, url, JSON body (a str is sent as it is), status, a piece of the message): at least 30 requests a
    user or a script can get wrong."""
    big = "9" * 30
    return [
        ("GET", "/api/search?targetid=12345", None, 404, "targetid 12345 is not in the index"),
        ("GET", "/api/search?targetid=0", None, 404, "not in the index"),
        ("GET", "/api/search?targetid=-5", None, 404, "not in the index"),
        ("GET", f"/api/search?targetid={big}", None, 404, "not in the index"),
        ("GET", "/api/search?targetid=abc", None, 422, "targetid"),
        ("GET", "/api/search?targetid=1.5", None, 422, "targetid"),
        ("GET", "/api/search?targetid=", None, 422, "targetid"),
        ("GET", "/api/search", None, 422, "give the query galaxy: targetid, or ra and dec"),
        ("GET", "/api/search?ra=400&dec=0", None, 422, "RA must be in degrees within [0, 360)"),
        ("GET", "/api/search?ra=10&dec=-91", None, 422, "Dec must be in degrees within [-90, 90]"),
        ("GET", "/api/search?ra=10", None, 422, "needs both ra and dec"),
        ("GET", "/api/search?ra=10&dec=0&radius=0", None, 422, "radius:"),
        ("GET", "/api/search?ra=1&dec=-89", None, 404, "the nearest is targetid"),
        ("GET", f"/api/search?ra=10&dec=0&targetid={tid}", None, 422, "give the query one way"),
        ("GET", f"/api/search?targetid={tid}&filter=redshift", None, 422, "write LABEL=LO:HI"),
        ("GET", f"/api/search?targetid={tid}&filter=redshift=0.5:0.1", None, 422, "LO 0.5 is above HI 0.1"),
        ("GET", f"/api/search?targetid={tid}&filter=colour=0:1", None, 422, "the index holds no such label"),
        ("GET", f"/api/search?targetid={tid}&dedup=-1", None, 422, "dedup:"),
        ("GET", f"/api/search?targetid={tid}&has_spectrum=maybe", None, 422, "has_spectrum:"),
        ("GET", f"/api/search?targetid={tid}&k=0", None, 422, "k: Input should be greater than or equal to 1"),
        ("GET", f"/api/search?targetid={tid}&k=-3", None, 422, "k:"),
        ("GET", f"/api/search?targetid={tid}&k=101", None, 422, "k: Input should be less than or equal to 100"),
        ("GET", f"/api/search?targetid={tid}&k=ten", None, 422, "k:"),
        (
            "GET",
            f"/api/search?targetid={tid}&query=radio",
            None,
            422,
            "query: Input should be 'image', 'spectrum' or 'both'",
        ),
        ("GET", f"/api/search?targetid={tid}&target=IMAGE", None, 422, "target:"),
        ("GET", f"/api/search?targetid={tid}&target=", None, 422, "target:"),
        ("GET", "/api/search.csv?targetid=12345", None, 404, "not in the index"),
        ("GET", f"/api/search.csv?targetid={tid}&k=1000", None, 422, "k:"),
        ("GET", "/api/search.csv?targetid=x", None, 422, "targetid"),
        ("POST", "/api/search", {"embedding": [0.1] * 5}, 422, "128 finite numbers, got 5"),
        ("POST", "/api/search", {"embedding": []}, 422, "128 finite numbers, got 0"),
        ("POST", "/api/search", {"embedding": [0.1] * 127 + ["NaN"]}, 422, "NaN"),
        ("POST", "/api/search", '{"embedding": [' + "0.1, " * 127 + "Infinity]}", 422, "NaN/inf"),
        ("POST", "/api/search", {"embedding": ["a"] * 128}, 422, "embedding.0"),
        ("POST", "/api/search", {"target": "image"}, 422, "embedding: Field required"),
        ("POST", "/api/search", {"embedding": [0.1] * 128, "k": 0}, 422, "k:"),
        ("POST", "/api/search", {"embedding": [0.1] * 128, "target": "sound"}, 422, "target:"),
        ("POST", "/api/search", "not json", 422, "JSON"),
        ("GET", "/api/galaxy/12345", None, 404, "targetid 12345 is neither in the index"),
        ("GET", "/api/nowhere", None, 404, "/api/nowhere: Not Found; the API is listed at /openapi.json"),
        ("DELETE", f"/api/search?targetid={tid}", None, 405, "Method Not Allowed"),
        ("GET", "/api/galaxy/abc", None, 422, "targetid"),
        ("GET", "/api/image/12345.png", None, 404, "targetid 12345 is not in the survey files"),
        ("GET", "/api/image/abc.png", None, 422, "targetid"),
        ("GET", "/api/spectrum/12345", None, 404, "not in the survey files"),
        ("GET", f"/api/spectrum/{tid}?bins=1", None, 422, "bins:"),
        ("GET", f"/api/spectrum/{tid}?bins=100000", None, 422, "bins:"),
        ("GET", "/static/../app.py", None, 404, ""),
        ("GET", "/static/%2e%2e/app.py", None, 404, ""),
        ("GET", "/static/..%2f..%2fpyproject.toml", None, 404, ""),
        ("GET", "/static/%2e%2e%2f%2e%2e%2fheads%2fcheckpoint.py", None, 404, ""),
        ("GET", "/static/nothing.js", None, 404, ""),
        ("GET", "/api/nothing", None, 404, ""),
        ("DELETE", "/api/search", None, 405, ""),
    ]


def test_bad_requests_get_4xx_with_a_message_and_change_nothing(served, client):
    root, service = served
    tid = int(service.index.rows["targetid"][1])
    before = client.get(f"/api/search?targetid={tid}&query=spectrum&target=image&k=5").json()
    cases = bad_requests(tid)
    assert len(cases) >= 30
    for method, url, body, status, message in cases:
        if isinstance(body, str):
            response = client.request(method, url, content=body.encode(), headers={"content-type": "application/json"})
        else:
            response = client.request(method, url, json=body)
        assert response.status_code == status, (method, url, response.status_code, response.text[:300])
        assert response.status_code != 500
        if message:
            assert message in response.json()["error"], (url, response.json())
    assert client.get(f"/api/search?targetid={tid}&query=spectrum&target=image&k=5").json() == before


def test_start_up_refuses_changed_heads_and_survey_files_without_the_galaxies(served, tmp_path):
    import torch

    from galclip.config import MockConfig
    from galclip.data.mock.survey import generate_mock
    from galclip.errors import GalclipError
    from galclip.index.build import build_indexes
    from galclip.serve.app import load_service

    root, service = served
    shutil.copytree(root / "heads", tmp_path / "heads")
    build_indexes(service.index.store_path(), tmp_path / "heads", tmp_path / "index")
    record = torch.load(tmp_path / "heads" / "heads.pt", weights_only=True)
    record["best_epoch"] += 1
    torch.save(record, tmp_path / "heads" / "heads.pt")  # retrained after the index was built
    with pytest.raises(GalclipError, match="was built from other heads.*rebuild the index"):
        load_service(tmp_path / "index")
    generate_mock(MockConfig(pairs=16, seed=11, batch_size=16, n_groups=1), tmp_path / "other")
    with pytest.raises(GalclipError, match="none of them holds its content.*put the original back"):
        load_service(root / "index", [tmp_path / "other" / "survey.h5"])


def test_damage_is_refused_at_start_and_answered_503_while_serving(served, tiny_mock, tmp_path):
    """The service checks every index file's SHA-256 when it starts; a survey file damaged while it runs gets 503
    with a message naming the file and galaxy, and what is intact is still served."""
    import warnings

    from galclip.errors import DamagedDataError
    from galclip.serve.app import create_app, load_service

    root, service = served
    shutil.copytree(root / "index", tmp_path / "index")
    data = bytearray((tmp_path / "index" / "map.npy").read_bytes())
    data[-3] ^= 0x01  # same size: only the hash can tell
    (tmp_path / "index" / "map.npy").write_bytes(bytes(data))
    with pytest.raises(DamagedDataError, match="map.npy: its SHA-256 differs.*galclip index"):
        load_service(tmp_path / "index")
    shutil.copy(tiny_mock / "survey.h5", tmp_path / "survey.h5")
    fresh = load_service(root / "index", [tmp_path / "survey.h5"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    client = TestClient(create_app(fresh))
    last = int(fresh.index.rows["targetid"][-1])
    first = int(fresh.index.rows["targetid"][0])
    with open(tmp_path / "survey.h5", "r+b") as f:  # the end of the file (the last group's rows) is lost
        f.truncate((tmp_path / "survey.h5").stat().st_size // 2)
    damaged = client.get(f"/api/image/{last}.png")
    assert damaged.status_code == 503 and "cannot be read" in damaged.json()["error"]
    assert str(last) in damaged.json()["error"]
    assert client.get("/api/search", params={"targetid": first, "k": 3}).status_code == 200


def test_the_service_only_reads(served, client, tiny_mock, tiny_store):
    root, service = served
    before = _snapshot(root / "index", tiny_store, tiny_mock)
    tid = int(service.index.rows["targetid"][3])
    for url in (
        f"/api/search?targetid={tid}&k=5",
        f"/api/image/{tid}.png",
        f"/api/spectrum/{tid}",
        "/api/map",
        f"/api/galaxy/{tid}",
        f"/api/search.csv?targetid={tid}",
    ):
        assert client.get(url).status_code == 200
    assert _snapshot(root / "index", tiny_store, tiny_mock) == before


# ---- a real server and a real browser ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(served):
    """uvicorn serving the app on 127.0.0.1 in a thread, as 'galclip serve' runs it."""
    import uvicorn

    from galclip.serve.app import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(served[1]), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", served[1]
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium through chromium-driver; a browser that cannot start fails the tests."""
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a browser or a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    assert binary and driver_path, "install Debian's chromium and chromium-driver ('make test' does)"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1200"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def _wait(predicate, timeout: float = 20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("the page did not get there in time")


def _card_ids(driver) -> list[str]:
    """The targetids of the grid's cards, read at once in the page (no element can go stale)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#grid .card')).map(c => c.dataset.targetid)"
    )


def _loaded_cards(driver) -> int:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#grid .card img'))"
        ".filter(i => i.complete && i.naturalWidth > 0).length"
    )


@pytest.mark.browser
def test_browser_position_filter_and_file_upload(live_server, browser, cutouts):
    from selenium.webdriver.common.by import By

    url, service = live_server
    index = service.index
    browser.get(url + "/")
    _wait(lambda: "galaxies" in browser.find_element(By.ID, "map-status").text)
    # by position: RA/Dec snap to the galaxy there
    tid = str(int(index.rows["targetid"][8]))
    for field, value in (("ra", index.rows["ra"][8]), ("dec", index.rows["dec"][8])):
        browser.find_element(By.ID, field).clear()
        browser.find_element(By.ID, field).send_keys(f"{value:.7f}")
    browser.find_element(By.ID, "k").clear()
    browser.find_element(By.ID, "k").send_keys("4")
    browser.find_element(By.ID, "go-position").click()
    _wait(lambda: f"targetid {tid}" in browser.find_element(By.ID, "query-card").text and _loaded_cards(browser) == 4)
    assert "nearest to RA" in browser.find_element(By.ID, "q-position").text
    assert "ra=" in browser.current_url
    # a redshift window: every result shown lies inside it, and the URL carries it
    z = index.rows["redshift"]
    lo, hi = (float(v) for v in np.nanpercentile(z, [25, 75]))
    browser.find_element(By.ID, "targetid").send_keys(tid)
    browser.find_element(By.ID, "zmin").send_keys(f"{lo:.4f}")
    browser.find_element(By.ID, "zmax").send_keys(f"{hi:.4f}")
    browser.find_element(By.ID, "go").click()

    def filtered() -> list[str] | None:  # the new grid, read in one script (an old one may still be replaced)
        ids = _card_ids(browser)
        done = "filter=redshift" in browser.current_url and _loaded_cards(browser) == 4
        return (
            ids
            if done and len(ids) == 4 and all(lo - 1e-4 <= z[index.find(int(t))] <= hi + 1e-4 for t in ids)
            else None
        )

    _wait(filtered)
    browser.save_screenshot(str(ARTIFACTS / "serve_position_filter.png"))
    # a cutout FITS chosen from disk: embedded on the server and searched, the source named on the card
    cutout = sorted((cutouts / "cutouts").glob("*.fits"))[0]
    browser.find_element(By.ID, "file").send_keys(str(cutout))
    _wait(lambda: f"upload: {cutout.name}" in browser.find_element(By.ID, "query-card").text, timeout=60)
    _wait(lambda: _loaded_cards(browser) >= 1)
    browser.save_screenshot(str(ARTIFACTS / "serve_upload.png"))


@pytest.mark.browser
def test_browser_search_click_map_share_and_errors(live_server, browser):
    from selenium.webdriver.common.by import By

    url, service = live_server
    tid = str(int(service.index.rows["targetid"][6]))
    browser.get(url + "/")
    _wait(lambda: "galaxies" in browser.find_element(By.ID, "map-status").text)
    # search by targetid from the query bar
    box = browser.find_element(By.ID, "targetid")
    box.clear()
    box.send_keys(tid)
    browser.find_element(By.ID, "k").clear()
    browser.find_element(By.ID, "k").send_keys("5")
    browser.find_element(By.ID, "go").click()
    _wait(lambda: _loaded_cards(browser) == 5)
    assert f"targetid {tid}" in browser.find_element(By.ID, "query-card").text
    assert browser.execute_script("return document.querySelector('#query-card img').naturalWidth") > 0
    # the query card shows the one zero-shot prediction, whatever k the page asks for
    expected = service.search(int(tid), "image", "image", 16)["prediction"]["redshift"]
    shown = browser.find_element(By.ID, "p-z").text
    assert shown == f"{expected['value']:.4f} ({expected['lo']:.4f}–{expected['hi']:.4f})", shown
    ssfr = service.search(int(tid), "image", "image", 16)["prediction"]["log_ssfr"]  # every label has its row
    shown = browser.find_element(By.ID, "p-log_ssfr").text
    assert shown == f"{ssfr['value']:.3f} ({ssfr['lo']:.3f}–{ssfr['hi']:.3f})", shown
    assert "log sSFR" in browser.find_element(By.ID, "query-card").text
    assert f"targetid={tid}" in browser.current_url
    browser.save_screenshot(str(ARTIFACTS / "serve_search.png"))
    # a click on a result searches from it, and the URL says so
    first = browser.find_elements(By.CSS_SELECTOR, "#grid .card")[0]
    clicked = first.get_attribute("data-targetid")
    first.click()
    _wait(lambda: f"targetid={clicked}" in browser.current_url)
    _wait(
        lambda: f"targetid {clicked}" in browser.find_element(By.ID, "query-card").text and _loaded_cards(browser) == 5
    )
    # back returns to the first search
    browser.back()
    _wait(lambda: f"targetid {tid}" in browser.find_element(By.ID, "query-card").text)
    # a click on the map searches from the galaxy nearest to the click
    emap = np.load(Path(service.index.path) / "map.npy")
    target_i = 20
    script = """
      const c = document.getElementById('map'); const r = c.getBoundingClientRect();
      const i = arguments[0];
      const p = window.mapProbe(i);
      const x = r.left + p[0] * r.width / c.width, y = r.top + p[1] * r.height / c.height;
      c.dispatchEvent(new MouseEvent('click', {clientX: x, clientY: y, bubbles: true}));"""
    browser.execute_script("window.mapProbe = (i) => [mapData.sx[i], mapData.sy[i]];")
    browser.execute_script(script, target_i)
    want = str(int(service.index.rows["targetid"][target_i]))
    near = [
        str(int(t)) for t, (x, y) in zip(service.index.rows["targetid"], emap) if np.allclose((x, y), emap[target_i])
    ]
    _wait(lambda: any(f"targetid={w}" in browser.current_url for w in [want, *near]))
    _wait(lambda: _loaded_cards(browser) == 5)
    browser.save_screenshot(str(ARTIFACTS / "serve_map_click.png"))
    # a shared URL reproduces the search: direction and k included
    other = str(int(service.index.rows["targetid"][11]))
    browser.get(f"{url}/?targetid={other}&query=spectrum&target=image&k=7")
    _wait(lambda: _loaded_cards(browser) == 7)
    assert browser.find_element(By.ID, "direction").get_attribute("value") == "spectrum:image"
    assert "spectrum → image" in browser.find_element(By.ID, "results-title").text
    assert (
        browser.find_element(By.ID, "csv")
        .get_attribute("href")
        .endswith(f"/api/search.csv?targetid={other}&query=spectrum&target=image&k=7")
    )
    # an unknown targetid shows a clear message, not a blank page
    browser.get(f"{url}/?targetid=12345&query=image&target=image&k=5")
    message = _wait(lambda: browser.find_element(By.ID, "message").text)
    assert "targetid 12345 is not in the index" in message
    assert browser.find_element(By.ID, "map-status").text  # the rest of the page is still there
    browser.save_screenshot(str(ARTIFACTS / "serve_unknown_targetid.png"))


def test_rank_anomalies_and_marks_over_http(client, served):
    from astropy.table import Table

    index = served[1].index
    tid = [str(int(t)) for t in index.rows["targetid"]]
    body = {"positive": tid[:3], "negative": [tid[5]], "space": "image-features", "n": 6}
    got = client.post("/api/rank", json=body)
    assert got.status_code == 200, got.text
    want = index.rank([int(t) for t in tid[:3]], [int(tid[5])], space="image-features", n=6)
    assert [c["targetid"] for c in got.json()["candidates"]] == [c["targetid"] for c in want["candidates"]]
    fits = client.post("/api/rank/catalogue?format=fits", json=body)
    assert fits.status_code == 200 and "attachment" in fits.headers["content-disposition"]
    table = Table.read(io.BytesIO(fits.content))
    assert list(table["TARGETID"]) == [c["targetid"] for c in want["candidates"]] and list(table["RANK"]) == [
        *range(1, 7)
    ]
    odd = client.get("/api/anomalies?space=embedding&n=4").json()
    assert [c["targetid"] for c in odd["candidates"]] == [c["targetid"] for c in index.anomalies(n=4)["candidates"]]
    csv_text = client.get("/api/anomalies/catalogue?n=4&format=csv").text
    assert csv_text.splitlines()[0].startswith("TARGETID,RA,DEC,RANK,SCORE") and len(csv_text.splitlines()) == 5
    marks = f'{{"format": "galclip-marks/1", "positive": ["{tid[1]}"], "negative": ["{tid[2]}"]}}'
    up = client.post("/api/marks", files={"file": ("m.json", marks.encode())})
    assert up.status_code == 200 and up.json() == {"positive": [tid[1]], "negative": [tid[2]]}
    # bad input: a 4xx naming it, never a 500
    for request, status, message in [
        ({**body, "positive": ["123"]}, 404, "positive targetid 123 is not in the index"),
        ({**body, "negative": [tid[0]]}, 422, "marked both positive and negative"),
        ({**body, "n": 0}, 422, "n: Input should be greater than or equal to 1"),
        ({**body, "n": 62}, 422, "ask for -n 60 or fewer"),
        ({**body, "positive": []}, 422, "positive"),
        ({**body, "space": "radio"}, 422, "space"),
    ]:
        res = client.post("/api/rank", json=request)
        assert res.status_code == status and message in res.json()["error"], (request, res.text)
    for content, message in [
        (b"ra,dec\n1,2\n", "is not a targetid"),
        (b'{"positive": [1]}', "not a galclip marks file"),
        (f"targetid,mark\n{tid[0]},positive\n{tid[0]},negative\n".encode(), "marked both"),
        (b"123\n", "targetid 123 is not in this index"),
    ]:
        res = client.post("/api/marks", files={"file": ("m.csv", content)})
        assert 400 <= res.status_code < 500 and message in res.json()["error"], res.text
    assert client.get("/api/anomalies?n=0").status_code == 422
    for content in ("1" * 5000 + "\n", "\u00b2\n"):  # too long for int64; a digit that is not ASCII
        res = client.post("/api/marks", files={"file": ("m.txt", content.encode())})
        assert res.status_code == 422 and "is not a targetid" in res.json()["error"], res.text
    # the page's marks download: the marks module's own file
    saved = client.post("/api/marks/file?format=csv", json={"positive": [tid[1]], "negative": [tid[2]]})
    assert saved.text == f"targetid,mark\n{tid[1]},positive\n{tid[2]},negative\n"
    assert client.post("/api/marks/file", json={"positive": [tid[1]], "negative": [tid[1]]}).status_code == 422


@pytest.mark.browser
def test_browser_mark_rank_export_and_reload_marks(live_server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url, service = live_server
    tid = str(int(service.index.rows["targetid"][3]))
    browser.get(f"{url}/?targetid={tid}&query=image&target=image&k=4")
    _wait(lambda: _loaded_cards(browser) == 4)
    browser.execute_script("localStorage.clear(); marks.positive = []; marks.negative = []; paintMarks();")
    # mark the query and two of its neighbours "more like this", one "not this"
    browser.find_element(By.CSS_SELECTOR, "#query-card .mark-positive").click()
    cards = browser.find_elements(By.CSS_SELECTOR, "#grid .card")
    marked = [tid] + [c.get_attribute("data-targetid") for c in cards[:2]]
    negative = cards[2].get_attribute("data-targetid")
    for card in cards[:2]:
        card.find_element(By.CSS_SELECTOR, ".mark-positive").click()
    cards[2].find_element(By.CSS_SELECTOR, ".mark-negative").click()
    assert f"{tid}" in browser.current_url  # a mark is not a click on the card: no new search
    assert browser.find_element(By.ID, "marks-count").text == "3 more like this · 1 not this"
    assert "marked-positive" in cards[0].get_attribute("class")
    # rank: candidate cards with scores, the marked ones not among them
    browser.find_element(By.ID, "rank-n").clear()
    browser.find_element(By.ID, "rank-n").send_keys("8")
    browser.find_element(By.ID, "rank").click()
    _wait(
        lambda: (
            len(browser.find_elements(By.CSS_SELECTOR, "#grid .card.candidate")) == 8 and _loaded_cards(browser) == 8
        )
    )
    assert "like your 3 marked" in browser.find_element(By.ID, "results-title").text
    shown = _card_ids(browser)
    want = service.index.rank([int(t) for t in marked], [int(negative)], n=8)
    assert shown == [str(c["targetid"]) for c in want["candidates"]]
    assert not browser.find_element(By.ID, "csv").is_displayed()  # the neighbours' CSV is not this view's
    assert "score" in browser.find_element(By.CSS_SELECTOR, "#grid .card .meta").text
    assert browser.find_element(By.ID, "candidates-fits").is_displayed()
    browser.save_screenshot(str(ARTIFACTS / "serve_rank.png"))
    # export: the browser saves the marks file (galclip's JSON, which galclip rank reads) and the candidates' FITS
    from astropy.table import Table

    from galclip.discover.marks import read_marks_file

    browser.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    browser.find_element(By.ID, "marks-json").click()
    exported = _wait(lambda: next(iter(tmp_path.glob("galclip-marks*.json")), None))
    _wait(lambda: exported.stat().st_size > 0 and exported.read_text().endswith("\n"))
    got = read_marks_file(exported)
    assert got.positive == tuple(int(t) for t in marked) and got.negative == (int(negative),)
    browser.find_element(By.ID, "candidates-fits").click()
    fits = _wait(lambda: next((p for p in tmp_path.glob("galclip-rank-*.fits") if p.stat().st_size > 0), None))
    _wait(lambda: not list(tmp_path.glob("*.crdownload")))
    assert [str(t) for t in Table.read(fits)["TARGETID"]] == shown
    # marks survive a reload (local storage), and come back from the file after clearing them
    browser.refresh()
    _wait(lambda: browser.find_element(By.ID, "marks-count").text == "3 more like this · 1 not this")
    browser.find_element(By.ID, "clear-marks").click()
    assert "mark galaxies" in browser.find_element(By.ID, "marks-count").text
    browser.find_element(By.ID, "marks-file").send_keys(str(exported))
    _wait(lambda: browser.find_element(By.ID, "marks-count").text == "3 more like this · 1 not this")
    # the unusual view lists the anomaly ranking
    browser.find_element(By.ID, "rank-n").clear()
    browser.find_element(By.ID, "rank-n").send_keys("8")
    browser.find_element(By.ID, "unusual").click()
    _wait(lambda: "most unusual" in browser.find_element(By.ID, "results-title").text and _loaded_cards(browser) == 8)
    odd = _card_ids(browser)
    assert odd == [str(c["targetid"]) for c in service.index.anomalies(n=8)["candidates"]]
    browser.save_screenshot(str(ARTIFACTS / "serve_unusual.png"))
