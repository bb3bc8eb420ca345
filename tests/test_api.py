"""The Python API exported from ``galclip``, the README's "From Python" example, and the package's layering."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import galclip
from galclip.config import HeadConfig
from galclip.vocabulary import PROPERTIES

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "galclip"


def readme_python_example() -> str:
    """The code block of the README's "From Python" section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## From Python") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def demo_layout(tiny_store, tmp_path_factory) -> Path:
    """A folder laid out as ``make demo`` plus ``galclip index`` leave it: galclip-demo/{features.zarr,heads,index}."""
    from galclip.heads.train import train_heads
    from galclip.index.build import build_indexes

    root = tmp_path_factory.mktemp("api")
    demo = root / "galclip-demo"
    demo.mkdir()
    (demo / "features.zarr").symlink_to(tiny_store, target_is_directory=True)
    train_heads(demo / "features.zarr", demo / "heads", HeadConfig(epochs=2, batch_size=16), progress=False)
    build_indexes(demo / "features.zarr", demo / "heads", demo / "index")
    return root


def test_readme_python_example_runs(demo_layout):
    """Exactly the README's example, run as a user would from the folder holding galclip-demo/."""
    result = subprocess.run(
        [sys.executable, "-c", readme_python_example()], cwd=demo_layout, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pairs;" in result.stdout and "(64, 128)" in result.stdout
    assert result.stdout.count("candidate ") == 3 and "logistic regression" in result.stdout


def test_api_matches_the_cli_records(demo_layout):
    import json

    from click.testing import CliRunner

    from galclip.cli import main

    demo = demo_layout / "galclip-demo"
    store = galclip.open_store(demo / "features.zarr")
    heads = galclip.load_heads(demo / "heads", store)
    z = galclip.embed(store, heads, "spectrum")
    assert z.shape == (store.n, 128) and z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1, rtol=1e-5)
    index = galclip.open_index(demo / "index")
    np.testing.assert_allclose(z, index.embeddings["spectrum"], atol=1e-6)  # the vectors the index holds
    tid = int(store.targetids()[5])
    record = index.search(targetid=tid, query="spectrum", target="image", k=4)
    cli = CliRunner().invoke(
        main,
        [
            "-q",
            "search",
            str(demo / "index"),
            "--targetid",
            str(tid),
            "--query",
            "spectrum",
            "--target",
            "image",
            "-k",
            "4",
            "--json",
        ],
    )
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.output) == record
    # a vector search from the query's own embedding finds the same neighbours (numpy brute force agrees)
    by_vector = index.search_embedding(z[5], target="image", k=4)
    assert [n["targetid"] for n in by_vector["neighbours"]] == [n["targetid"] for n in record["neighbours"]]
    brute = np.argsort(-(index.embeddings["image"] @ z[5]))[:4]
    assert [n["targetid"] for n in record["neighbours"]] == store.targetids()[brute].tolist()
    assert store.label_names == PROPERTIES and set(np.unique(store.split())) <= {0, 1, 2}  # every PROVABGS property


def test_api_refuses_bad_arguments(demo_layout):
    from galclip.errors import GalclipError

    index = galclip.open_index(demo_layout / "galclip-demo" / "index")
    with pytest.raises(GalclipError, match="128 finite numbers"):
        index.search_embedding(np.ones(5), target="image")
    with pytest.raises(GalclipError, match="NaN"):
        index.search_embedding(np.full(128, np.nan), target="image")
    with pytest.raises(GalclipError, match="target must be one of"):
        index.search_embedding(np.ones(128), target="radio")
    with pytest.raises(GalclipError, match="not in the index"):
        index.search(targetid=1, query="image", target="image")
    with pytest.raises(GalclipError, match="modality must be one of"):
        galclip.embed(galclip.open_store(demo_layout / "galclip-demo" / "features.zarr"), None, "radio")


def test_import_galclip_is_cheap():
    code = "import sys, galclip; print(any(m in sys.modules for m in ('torch', 'faiss', 'zarr')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
    assert callable(galclip.open_index) and galclip.__all__[:4] == ["open_store", "load_heads", "embed", "open_index"]


def _imports(path: Path) -> set[str]:
    """galclip modules imported anywhere in one source file (top level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("galclip"):
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("galclip"))
    return names


def _package_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0] if len(rel.parts) > 1 else rel.name


# What each stage may import: data -> extract -> store <- heads <- index <- evaluate / serve / predict <- cli.
FORBIDDEN = {
    "data": (
        "galclip.extract",
        "galclip.store",
        "galclip.heads",
        "galclip.index",
        "galclip.evaluate",
        "galclip.cli",
        "galclip.predict",
    ),
    "store": (
        "galclip.extract",
        "galclip.heads",
        "galclip.index",
        "galclip.evaluate",
        "galclip.cli",
        "galclip.data",
        "galclip.predict",
    ),
    "extract": ("galclip.heads", "galclip.index", "galclip.evaluate", "galclip.cli", "galclip.predict"),
    "heads": ("galclip.extract", "galclip.index", "galclip.evaluate", "galclip.cli", "galclip.predict"),
    # index/ knows vectors, rows and files: survey rows become vectors above it (embed_survey)
    "index": (
        "galclip.evaluate",
        "galclip.cli",
        "galclip.extract",
        "galclip.predict",
        "galclip.serve",
        "galclip.embed_survey",
        "galclip.data",
    ),
    # the page and the report read survey rows through data/, never through extract/
    "evaluate": ("galclip.cli", "galclip.extract", "galclip.serve", "galclip.predict"),
    "serve": (
        "galclip.cli",
        "galclip.extract",
        "galclip.evaluate",
        "galclip.heads.trainer",
        "galclip.heads.sweep",
        "galclip.predict",
    ),
    # shared modules import no package face (galclip/__init__.py) and no stage
    "provenance": ("galclip.extract", "galclip.store", "galclip.heads", "galclip.index", "galclip.cli"),
    "vocabulary": ("galclip",),
    "targetids": ("galclip",),
    # discovery ranks what the index and the stores hold, and writes catalogues in predict's format
    "discover": (
        "galclip.cli",
        "galclip.extract",
        "galclip.evaluate",
        "galclip.serve",
        "galclip.predict.run",
        "galclip.heads.trainer",
    ),
    # predict is an extraction of one modality plus a search: it runs the extraction loop, like the orchestrators
    "predict": ("galclip.cli", "galclip.evaluate", "galclip.serve", "galclip.heads.trainer", "galclip.heads.sweep"),
}


def test_arrows_run_one_way():
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        package = _package_of(path)
        imports = _imports(path)
        for banned in FORBIDDEN.get(package, ()):
            if any(name == banned or name.startswith(banned + ".") for name in imports):
                broken.append(f"{path.relative_to(PACKAGE)} imports {banned}")
        orchestrator = package in ("cli", "demo", "predict")  # only these run the extraction loop
        if package != "extract" and not orchestrator and any(n.startswith("galclip.extract.run") for n in imports):
            broken.append(f"{path.relative_to(PACKAGE)} imports the extraction run loop")
    assert not broken, broken


def test_no_module_imports_the_package_face():
    """``galclip/__init__.py`` is the Python API's face: no module of the package imports it (``import galclip`` or
    ``from galclip import name``) except the face itself and its lazy ``api``."""
    modules = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if p.is_dir()}
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(a.name == "galclip" for a in node.names):
                broken.append(f"{path.relative_to(PACKAGE)}: import galclip")
            elif isinstance(node, ast.ImportFrom) and node.module == "galclip":
                broken += [
                    f"{path.relative_to(PACKAGE)}: from galclip import {a.name}"
                    for a in node.names
                    if a.name not in modules
                ]
    assert not broken, broken


def test_one_test_module_per_package():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    tests = {p.stem.removeprefix("test_") for p in (ROOT / "tests").glob("test_*.py")}
    assert packages - {"data"} <= tests, sorted(packages - tests)  # data/ is test_data.py and test_mock.py
    assert "data" in tests and "mock" in tests
