"""The extract package: preprocessing, encoders and checkpoint layouts, bad input rows, augmented variants,
kill -9 and resume, torchrun."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import SHARDED_EXTRACT_ARGS as EXTRACT_ARGS

from galclip.config import ExtractConfig, HeadConfig
from galclip.data.preprocess import centre_crop, grz_to_rgb, images_to_chw, zscore_spectra
from galclip.errors import CheckpointError, InputError, StoreError
from galclip.extract.augment import augment_images, augment_spectra
from galclip.extract.image_encoder import ImageTrunk, load_stein_checkpoint, moco_resnet50
from galclip.extract.spectrum_encoder import SpenderSpectrumEncoder, load_spender_checkpoint
from galclip.store import FeatureStore


def _rgb_reference(img_hwc_grz: np.ndarray, variant: str) -> np.ndarray:
    """Loop-per-band numpy transcription of the survey's sdss_rgb formula: (H, W, 3) -> (H, W, 3)."""
    scales = {"g": (2, 6.0), "r": (1, 3.4), "z": (0, 2.2)}
    m, q = 0.03, 20.0
    total = np.zeros(img_hwc_grz.shape[:2])
    for b, band in enumerate("grz"):
        total += np.maximum(0, img_hwc_grz[..., b] * scales[band][1] + m)
    intensity = total / 3
    f_i = np.arcsinh(q * intensity) / np.sqrt(q)
    intensity = intensity + (intensity == 0) * 1e-6
    rgb = np.zeros(img_hwc_grz.shape)
    for b, band in enumerate("grz"):
        plane, s = scales[band]
        x = img_hwc_grz[..., b]
        rgb[..., plane] = (x * s + m) * f_i / intensity if variant == "lupton" else x * (s + m * f_i / intensity)
    return np.clip(rgb, 0, 1)


@pytest.mark.parametrize("variant", ["lupton", "stein"])
def test_rgb_mapping_matches_reference(variant):
    rng = np.random.default_rng(0)
    img = rng.lognormal(-3, 1.5, (2, 20, 20, 3)) - 0.02  # (B, H, W, grz), some negative sky pixels
    got = grz_to_rgb(torch.tensor(img, dtype=torch.float64).permute(0, 3, 1, 2), variant).permute(0, 2, 3, 1).numpy()
    for i in range(2):
        np.testing.assert_allclose(got[i], _rgb_reference(img[i], variant), atol=1e-6)


def test_stein_orientation_is_what_his_loader_fed_the_network():
    """ssl-legacysurvey's DecalsDataset reads a (C, H, W) cutout, np.swapaxes(im, 0, 2), then ToTensor; the
    AstroCLIP file stores that swapped (W, H, C) array. On a non-symmetric image, galclip's "stein" tensor equals
    that chain's and its "survey" tensor is the cutout itself."""
    from torchvision import transforms

    rng = np.random.default_rng(0)
    cutout_chw = rng.random((3, 152, 152)).astype(np.float32)
    cutout_chw[:, 10:20, 100:140] += 5.0  # a bar: not symmetric under transposition
    stored_whc = np.swapaxes(cutout_chw, 0, 2)  # the AstroCLIP row (as the loader's swapaxes makes it)
    loader = transforms.ToTensor()(np.swapaxes(cutout_chw, 0, 2))
    assert not torch.equal(loader, torch.from_numpy(cutout_chw))  # the two orientations differ here
    np.testing.assert_array_equal(images_to_chw(stored_whc[None], "stein")[0].numpy(), loader.numpy())
    np.testing.assert_array_equal(images_to_chw(stored_whc[None], "survey")[0].numpy(), cutout_chw)


def test_image_layout_and_crop():
    whc = np.arange(2 * 152 * 152 * 3, dtype=np.float32).reshape(2, 152, 152, 3)
    chw = images_to_chw(whc)
    assert chw.shape == (2, 3, 152, 152)
    assert chw[1, 2, 10, 40] == whc[1, 40, 10, 2]  # (W, H, C) -> (C, H, W)
    crop = centre_crop(chw, 96)
    assert crop.shape == (2, 3, 96, 96) and crop[0, 0, 0, 0] == chw[0, 0, 28, 28]


def test_zscore_spectra():
    y = torch.randn(4, 7781, dtype=torch.float64) * 5 + 3
    z = zscore_spectra(y)
    np.testing.assert_allclose(z.mean(1).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(1).numpy(), 1, atol=1e-5)


def test_spender_features_follow_eq3():
    torch.manual_seed(0)
    enc = SpenderSpectrumEncoder().eval()
    y = torch.randn(3, 7781)
    with torch.no_grad():
        x = enc.conv3(enc.pool2(enc.conv2(enc.pool1(enc.conv1(y[:, None])))))
        assert x.shape == (3, 512, 142)  # 7781 -> pool 5 -> 1557 -> pool 11 -> 142
        h, a = x[:, :256], x[:, 256:]
        ref = torch.stack([(h[i] * torch.softmax(a[i], dim=-1)).sum(-1) for i in range(3)])
        np.testing.assert_allclose(enc.features(y).numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
        assert enc(y).shape == (3, 6)


def test_stein_checkpoint_layout_round_trip(tmp_path):
    torch.manual_seed(1)
    src = moco_resnet50().eval()
    state = {f"encoder_q.{k}": v for k, v in src.state_dict().items()}
    state.update({f"encoder_k.{k}": v.clone() for k, v in src.state_dict().items()})
    state["queue"] = torch.randn(128, 16)
    state["queue_ptr"] = torch.zeros(1, dtype=torch.long)
    torch.save({"state_dict": state, "epoch": 3, "hyper_parameters": {}}, tmp_path / "stein.ckpt")
    model, fc = load_stein_checkpoint(tmp_path / "stein.ckpt")
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        ref = torch.flatten(
            torch.nn.functional.adaptive_avg_pool2d(torch.nn.Sequential(*list(src.children())[:-2])(x), 1), 1
        )
        np.testing.assert_allclose(ImageTrunk(model.eval())(x).numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
    assert fc["0.weight"].shape == (2048, 2048) and fc["2.weight"].shape == (128, 2048)

    del state["encoder_q.layer1.0.conv1.weight"]
    state["encoder_q.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=r"missing \['layer1.0.conv1.weight'\].*unexpected \['extra.weight'\]"):
        load_stein_checkpoint(tmp_path / "bad.ckpt")


@pytest.mark.parametrize("n_aux", [0, 1])
def test_spender_checkpoint_layout_round_trip(tmp_path, n_aux):
    torch.manual_seed(2)
    src = SpenderSpectrumEncoder(n_latent=6, n_aux=n_aux).eval()
    state = {f"encoder.{k}": v for k, v in src.state_dict().items()}
    state["encoder.instrument.wave_obs"] = torch.linspace(3600, 9824, 7781)
    state["decoder.wave_rest"] = torch.linspace(2000, 9824, 100)
    torch.save({"model": [state], "losses": np.zeros(3)}, tmp_path / "spender.pt")
    enc = load_spender_checkpoint(tmp_path / "spender.pt").eval()
    y = torch.randn(2, 7781)
    with torch.no_grad():
        np.testing.assert_allclose(enc.features(y).numpy(), src.features(y).numpy(), rtol=1e-5, atol=1e-6)
    assert enc.mlp[0].weight.shape[1] == 256 + n_aux


def test_extraction_fills_store_and_is_idempotent(tiny_mock, tiny_store):
    from galclip.data.survey import SurveyReader
    from galclip.extract.run import run_extraction
    from galclip.store import FeatureStore

    store = FeatureStore.open(tiny_store)
    info = store.info()
    assert info.complete and info.n == 64
    data = store.load()
    assert data["image_features"].shape == (64, 2048) and data["spectrum_features"].shape == (64, 256)
    assert np.isfinite(data["image_features"]).all() and np.isfinite(data["spectrum_features"]).all()
    np.testing.assert_array_equal(data["targetid"], SurveyReader(tiny_mock).targetids())
    assert info.provenance["encoders"]["image"]["weights"]["source"] == "random"
    again = run_extraction(tiny_mock, tiny_store, ExtractConfig(batch_size=32), progress=False)
    assert again["already_complete"] and again["shards_written"] == 0
    with pytest.raises(StoreError, match="preprocessing"):
        run_extraction(tiny_mock, tiny_store, ExtractConfig(batch_size=32, rgb="stein"), progress=False)


def test_features_do_not_depend_on_batch_size(tiny_mock, tiny_store, tmp_path):
    from galclip.extract.run import run_extraction
    from galclip.store import FeatureStore

    run_extraction(tiny_mock, tmp_path / "b7.zarr", ExtractConfig(batch_size=7), progress=False)
    a, b = FeatureStore.open(tiny_store).load(), FeatureStore.open(tmp_path / "b7.zarr").load()
    np.testing.assert_allclose(a["spectrum_features"], b["spectrum_features"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a["image_features"], b["image_features"], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def corrupted_mock(tiny_mock, tmp_path_factory):
    """The tiny mock with a NaN pixel, an all-zero spectrum and an inf flux in three rows of group 0."""
    out = tmp_path_factory.mktemp("bad")
    shutil.copy(tiny_mock / "survey.h5", out / "survey.h5")
    with h5py.File(out / "survey.h5", "r+") as f:
        g = f["0"]
        img = g["image"][2]
        img[10, 10, 1] = np.nan
        g["image"][2] = img
        g["spectrum"][5] = np.zeros((7781, 1), np.float32)
        spec = g["spectrum"][9]
        spec[100, 0] = np.inf
        g["spectrum"][9] = spec
        ids = g["targetid"][[2, 5, 9]]
    return out, ids


def test_bad_rows_fail_names_file_targetid_and_fix(corrupted_mock, tmp_path):
    from galclip.extract.run import run_extraction

    data, ids = corrupted_mock
    with pytest.raises(InputError) as err:
        run_extraction(data, tmp_path / "s.zarr", ExtractConfig(batch_size=16, rows_per_shard=16), progress=False)
    msg = str(err.value)
    assert "survey.h5:0" in msg and f"targetid {ids[0]}: image has NaN/inf pixels" in msg
    assert f"targetid {ids[1]}: spectrum is constant" in msg and "--bad-rows skip" in msg
    assert not FeatureStore.open(tmp_path / "s.zarr").complete_mask().any()  # nothing half-written is flagged


def test_bad_rows_skip_quarantines_and_readers_leave_them_out(corrupted_mock, tmp_path):
    from galclip.extract.run import run_extraction
    from galclip.heads.train import train_heads
    from galclip.store.check import check_store

    data, ids = corrupted_mock
    summary = run_extraction(
        data, tmp_path / "s.zarr", ExtractConfig(batch_size=16, rows_per_shard=16, bad_rows="skip"), progress=False
    )
    assert summary["quarantined"] == 3
    store = FeatureStore.open(tmp_path / "s.zarr")
    result = check_store(store)
    assert result["ok"], result["problems"]
    assert {q["targetid"] for q in result["quarantine"]} == set(ids.tolist())
    assert "spectrum has NaN/inf values" in [q["reason"] for q in result["quarantine"] if q["targetid"] == ids[2]]
    loaded = store.load()
    assert len(loaded["targetid"]) == 61 and not np.isin(ids, loaded["targetid"]).any()
    assert np.isfinite(loaded["image_features"]).all()
    train_heads(tmp_path / "s.zarr", tmp_path / "h", HeadConfig(epochs=1, batch_size=16), progress=False)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    store = FeatureStore.open(path)
    return store.load(features=tuple(store.feature_arrays))


def _assert_same_store(a: Path, b: Path) -> None:
    xa, xb = _arrays(a), _arrays(b)
    assert xa.keys() == xb.keys()
    for name in xa:
        np.testing.assert_array_equal(xa[name], xb[name], err_msg=name)


def test_official_spender_package_checkpoint_loads(tmp_path):
    import spender

    torch.manual_seed(0)
    wave = torch.linspace(3600, 9824, 7781)
    model = spender.SpectrumAutoencoder(spender.Instrument(wave), torch.linspace(2000, 9824, 2000), n_latent=6).eval()
    torch.save({"model": [model.state_dict()], "losses": np.zeros((2, 3))}, tmp_path / "spender.desi-edr.test.pt")
    ours = load_spender_checkpoint(tmp_path / "spender.desi-edr.test.pt").eval()
    y = torch.randn(4, 7781)
    with torch.no_grad():
        h, a = model.encoder._downsample(y)
        reference = torch.sum(h * model.encoder.softmax(a), dim=2)  # spender's own attention path
        np.testing.assert_allclose(ours.features(y).numpy(), reference.numpy(), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(ours(y).numpy(), model.encoder(y).numpy(), atol=1e-5, rtol=1e-5)


def test_augmented_views_are_deterministic_per_targetid():
    rng = np.random.default_rng(0)
    images = torch.as_tensor(rng.lognormal(-3, 1, (4, 3, 152, 152)), dtype=torch.float32)
    ids = np.array([11, 12, 13, 14])
    a = augment_images(images, ids, 0, 96)
    assert a.shape == (4, 3, 96, 96)
    torch.testing.assert_close(augment_images(images, ids, 0, 96), a, rtol=0, atol=0)
    # a view depends on its own galaxy only, not on the batch it is in
    torch.testing.assert_close(augment_images(images[2:3], ids[2:3], 0, 96), a[2:3], rtol=0, atol=1e-6)
    assert (augment_images(images, ids, 1, 96) - a).abs().mean() > 1e-3
    spectra = torch.randn(4, 7781)
    torch.testing.assert_close(augment_spectra(spectra, ids, 0), augment_spectra(spectra, ids, 0), rtol=0, atol=0)


def _stein_extra_blur(rng: np.random.Generator, n: int) -> np.ndarray:
    """Stein et al.'s GaussianBlur, transcribed: per band a true and a final σ (px) from numpy's lognormal
    with their fits, the blur sqrt(max(final² - true², 0)) handed to skimage as sigma. (n, 3)."""
    shape = np.array([0.2109966, 0.3008485, 0.3471172])
    loc = np.array([1.0807153, 1.2394326, 1.1928363])
    scale = np.array([1.3153171, 0.9164757, 0.8233702])
    true = rng.lognormal(np.log(scale), shape, (n, 3)) + loc
    final = rng.lognormal(np.log(scale), shape, (n, 3)) + loc
    extra = final**2 - true**2
    extra[extra < 0] = 0
    return np.sqrt(extra)


def test_psf_blur_is_sigma_in_pixels_as_stein_draws_it():
    from galclip.extract.augment import psf_blur_sigma_px
    from galclip.split import targetid_uniform

    n = 200_000
    ours = psf_blur_sigma_px(
        *(np.stack([targetid_uniform(np.arange(n), salt=s + 3 * j) for j in range(3)], 1) for s in (101, 202))
    )
    stein = _stein_extra_blur(np.random.default_rng(0), n)
    for band, want in enumerate((1.15, 1.10, 1.09)):  # mean of the non-zero extra σ, px
        got, ref = ours[:, band][ours[:, band] > 0], stein[:, band][stein[:, band] > 0]
        assert got.mean() == pytest.approx(want, abs=0.02) and ref.mean() == pytest.approx(want, abs=0.02)
        assert (ours[:, band] > 0).mean() == pytest.approx((stein[:, band] > 0).mean(), abs=0.01)  # about half
        np.testing.assert_allclose(np.quantile(got, [0.1, 0.5, 0.9]), np.quantile(ref, [0.1, 0.5, 0.9]), atol=0.03)


def test_blurred_point_source_has_the_drawn_second_moment():
    from galclip.extract.augment import _gaussian_blur_fft

    point = torch.zeros(1, 3, 96, 96, dtype=torch.float64)
    point[..., 48, 48] = 1.0
    sigma = torch.tensor([[0.8, 1.5, 2.5]], dtype=torch.float64)
    out = _gaussian_blur_fft(point, sigma)[0]
    y = torch.arange(96, dtype=torch.float64) - 48
    for band in range(3):
        img = out[band] / out[band].sum()
        var_x = float((img.sum(0) * y**2).sum())  # second moment along each axis: σ² of the drawn blur
        var_y = float((img.sum(1) * y**2).sum())
        assert var_x == pytest.approx(float(sigma[0, band]) ** 2, rel=1e-3)
        assert var_y == pytest.approx(float(sigma[0, band]) ** 2, rel=1e-3)


def test_variant_arrays_in_store(sharded_store):
    store = FeatureStore.open(sharded_store)
    assert store.feature_arrays["image_features_aug"] == (1, 2048) and store.n_shards == 4
    data = store.load(features=("image_features", "image_features_aug"))
    assert np.isfinite(data["image_features_aug"]).all()
    assert not np.allclose(data["image_features_aug"][:, 0], data["image_features"])


def test_kill_minus_9_then_resume_is_bitwise_identical(tiny_mock, sharded_store, tmp_path):
    """kill -9 five times in a row — at seeded random moments and right after a shard lands — then finish."""
    store = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "galclip", "-q", "extract", str(tiny_mock), str(store), *EXTRACT_ARGS]
    rng = np.random.default_rng(7)

    def n_complete() -> int:
        return int(FeatureStore.open(store).complete_mask().sum()) if (store / "zarr.json").exists() else 0

    kills = 0
    for attempt in range(5):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before, deadline = n_complete(), time.time() + 120
        at = time.time() + rng.uniform(0.5, 3.0) if attempt % 2 == 0 else None  # random moment, or after a shard
        while proc.poll() is None and time.time() < deadline:
            if (at is not None and time.time() >= at) or (at is None and n_complete() > before):
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.05)
        proc.wait()
        if proc.returncode == 0:
            break
    assert kills >= 3
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _assert_same_store(store, sharded_store)
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0 and "already complete" in again.stdout


def test_ctrl_c_says_what_is_kept_and_the_command_that_resumes(tiny_mock, sharded_store, tmp_path):
    """SIGINT (Ctrl-C) once a shard has landed: exit 130, a message naming the finished shards and the exact
    command; that command then finishes the store bitwise as an uninterrupted run."""
    import shlex

    store = tmp_path / "cut.zarr"
    cmd = [sys.executable, "-m", "galclip", "-q", "extract", str(tiny_mock), str(store), *EXTRACT_ARGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if (store / "zarr.json").exists() and FeatureStore.open(store).complete_mask().sum() >= 1:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the extraction finished before the interrupt landed")
    assert proc.returncode == 130, err
    assert "interrupted:" in err and "are complete and kept" in err and "Traceback" not in err, err
    line = next(ln.strip() for ln in err.splitlines() if ln.strip().startswith("galclip extract "))
    assert "--rows-per-shard 16" in line and "--variants 1" in line, line
    assert not (tmp_path / "cut.zarr.lock").exists()
    from click.testing import CliRunner

    from galclip.cli import main

    words = shlex.split(line)  # run in this process: the same command, without a second interpreter start
    assert words[:2] == ["galclip", "extract"], words
    done = CliRunner().invoke(main, ["-q", *words[1:], "--batch-size", "8", "--no-progress"])
    assert done.exit_code == 0, done.output
    _assert_same_store(store, sharded_store)


def test_slurm_script_runs_its_torchrun_command_with_two_local_ranks(tiny_mock, sharded_store, tmp_path):
    """scripts/extract.sbatch as SLURM would start it on one node with two ranks (srun stood in by a shim that
    runs its command, torchrun): two writer processes (gloo ranks) on disjoint whole shards of one store equal one
    writer, bit for bit."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "extract.sbatch"
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (shims / "srun").chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ,
        PATH=f"{shims}:{os.environ['PATH']}",
        PYTHON=sys.executable,
        SLURM_NNODES="1",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST="localhost",
        HEAD_NODE="127.0.0.1",
        RDZV_PORT=str(port),
        NPROC_PER_NODE="2",
        OMP_NUM_THREADS=str(torch.get_num_threads()),
    )
    store = tmp_path / "slurm.zarr"
    done = subprocess.run(
        ["bash", str(script), str(tiny_mock), str(store), *EXTRACT_ARGS, "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 node(s) x 2 rank(s), rendezvous 127.0.0.1" in done.stdout
    assert "rank 0/2" in done.stdout and "rank 1/2" in done.stdout
    _assert_same_store(store, sharded_store)
    assert FeatureStore.open(store).info().complete
    again = subprocess.run(
        ["bash", str(script), str(tiny_mock), str(store), *EXTRACT_ARGS, "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )  # resubmitted: nothing left to do
    assert again.returncode == 0 and "already complete" in again.stdout, again.stderr[-2000:]
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)
    assert usage.returncode == 2 and "usage: sbatch scripts/extract.sbatch DATA STORE" in usage.stderr


def test_stein_weights_select_stein_rgb_and_seed_the_image_head(tiny_mock, tmp_path):
    from galclip.config import HeadConfig
    from galclip.extract.image_encoder import moco_resnet50
    from galclip.extract.run import run_extraction
    from galclip.heads.train import train_heads
    from galclip.provenance import sha256_file

    torch.manual_seed(4)
    src = moco_resnet50()
    torch.save({"state_dict": {f"encoder_q.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "stein.ckpt")
    run_extraction(
        tiny_mock,
        tmp_path / "s.zarr",
        ExtractConfig(image_weights=str(tmp_path / "stein.ckpt"), batch_size=32),
        progress=False,
    )
    store = FeatureStore.open(tmp_path / "s.zarr")
    assert store.provenance["preprocessing"]["image"]["rgb"] == "stein"
    assert store.provenance["preprocessing"]["image"]["orientation"] == "stein"
    assert store.provenance["encoders"]["image"]["weights"]["sha256"] == sha256_file(tmp_path / "stein.ckpt")
    np.testing.assert_array_equal(store.moco_fc()["0.weight"], src.fc[0].weight.detach().numpy())
    summary = train_heads(tmp_path / "s.zarr", tmp_path / "heads", HeadConfig(epochs=1, batch_size=16), progress=False)
    assert summary["image_head_init"] == "moco_fc"


def test_second_extraction_refuses_while_first_holds_the_lock(tiny_mock, tmp_path):
    from galclip.errors import StoreError
    from galclip.extract.run import run_extraction

    store = tmp_path / "locked.zarr"
    code = (
        "import sys, time; from galclip.store.lock import StoreLock; lock = StoreLock(sys.argv[1]); lock.acquire(); "
        "print('held', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(store)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreError, match=f"pid {holder.pid}"):
            run_extraction(tiny_mock, store, ExtractConfig(batch_size=32), progress=False)
        assert not store.exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # the kernel drops the lock with the process
        holder.wait()
    run_extraction(tiny_mock, store, ExtractConfig(batch_size=32), progress=False)
    assert FeatureStore.open(store).info().complete


def test_torchrun_rank0_error_stops_every_rank(tiny_mock, tmp_path):
    """Rank 0 meets a bad catalogue, then a lock held by another extraction: every rank exits non-zero at
    once with rank 0's reason, none waits at a barrier until the distributed timeout."""
    from galclip.store.lock import StoreLock

    (tmp_path / "cat.h5").write_bytes(b"not a catalogue")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    base = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "galclip",
        "-q",
        "extract",
        str(tiny_mock / "survey.h5"),
        *EXTRACT_ARGS,
    ]
    done = subprocess.run(
        [*base, str(tmp_path / "a.zarr"), "--catalogue", str(tmp_path / "cat.h5")],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert done.returncode != 0
    assert "cat.h5: not a readable HDF5 catalogue" in done.stdout + done.stderr
    assert "rank 0 stopped the job" in done.stdout + done.stderr  # what rank 1 says
    assert not (tmp_path / "a.zarr").exists()
    with StoreLock(tmp_path / "b.zarr"):  # this test process is "another extraction" of b.zarr
        done = subprocess.run([*base, str(tmp_path / "b.zarr")], capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode != 0
    assert f"pid {os.getpid()}" in done.stdout + done.stderr and "rank 0 stopped the job" in done.stdout + done.stderr
    assert not (tmp_path / "b.zarr").exists()
