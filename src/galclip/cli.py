"""galclip command line: one verb per stage, each turning options into a config and calling
one library function. Heavy libraries (torch, faiss, umap) are imported inside the commands,
so ``galclip --help`` is instant. Only this module configures logging.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from pathlib import Path

import click

logger = logging.getLogger("galclip")


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose >= 0 else logging.WARNING
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    for noisy in ("numba", "matplotlib", "PIL", "h5py", "asyncio", "zarr", "numcodecs", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def user_errors(func):
    """Turn galclip's user-facing errors, and the OS's write faults (no space, permission denied, read-only, I/O
    error), into a one-line message and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from tqdm.contrib.logging import logging_redirect_tqdm

        from galclip.errors import GalclipError
        from galclip.integrity import os_fault, os_fault_message

        try:
            with logging_redirect_tqdm():  # log lines print above progress bars, not through them
                return func(*args, **kwargs)
        except GalclipError as err:
            raise click.ClickException(str(err)) from err
        except Exception as err:
            fault = os_fault(err)
            if fault is None:
                raise
            raise click.ClickException(os_fault_message(fault)) from err

    return wrapper


GALCLIP_KINDS = frozenset(
    {
        "store",
        "index",
        "heads",
        "train_state",
        "sweep",
        "report",
        "survey",
        "provabgs",
        "catalogue",
        "index_file",
        "store_part",
    }
)
STORE_IN, INDEX_IN, HEADS_IN, SURVEY_IN = ("store",), ("index",), ("heads",), ("survey",)
USAGE = {
    "extract": "DATA... STORE",
    "heads": "STORE OUT",
    "sweep": "STORE OUT",
    "evaluate": "STORE HEADS OUT",
    "index": "STORE HEADS OUT",
    "search": "INDEX",
    "serve": "INDEX",
    "predict": "INDEX INPUT OUT",
    "rank": "INDEX OUT",
    "anomalies": "INDEX OUT",
    "info": "STORE",
}
WHAT_MAKES = {
    "store": "what 'galclip extract DATA STORE' writes (a folder with zarr.json)",
    "index": "what 'galclip index STORE HEADS OUT' writes (a folder with index.json)",
    "heads": "what 'galclip heads STORE OUT' writes (OUT/heads.pt)",
    "survey": "survey files: AstroCLIP HDF5 (what 'galclip mock' writes), Legacy Survey cutout FITS, DESI coadd FITS "
    "or Multimodal Universe HDF5",
}


def _out_kinds(*own: str) -> frozenset[str]:
    """Kinds an output argument may be: anything but another galclip artefact (ownership is then checked by the
    command itself, see galclip.outputs)."""
    from galclip.kinds import DESCRIPTIONS

    return frozenset(DESCRIPTIONS) - (GALCLIP_KINDS - set(own))


def _require_kinds(command: str, args: list[tuple[str, Path, tuple[str, ...] | frozenset[str]]]) -> None:
    """Refuse positional arguments of the wrong kind (a store where an index is wanted, arguments swapped ...):
    one line naming what was given, what was wanted and the command that fixes it."""
    from itertools import permutations

    from galclip.errors import InputError
    from galclip.kinds import DESCRIPTIONS, container, describe, kind_of

    kinds = [kind_of(path) for _, path, _ in args]
    bad = [i for i, (_, _, allowed) in enumerate(args) if kinds[i] not in allowed]
    if not bad:
        return
    label, path, allowed = args[bad[0]]
    given = kinds[bad[0]]
    is_output = "missing" in allowed  # outputs may be new; inputs must exist (click checks that first)
    wanted_kinds = [] if is_output else [k for k in allowed if k in GALCLIP_KINDS]
    wanted = " or ".join(DESCRIPTIONS[k] for k in wanted_kinds) if wanted_kinds else "a new folder or file"
    message = f"{path}: is {describe(path)}, but {label} of 'galclip {command} {USAGE[command]}' must be {wanted}"
    for order in permutations(range(len(args))):
        if order != tuple(range(len(args))) and all(kinds[j] in args[i][2] for i, j in enumerate(order)):
            fixed = " ".join(str(args[j][1]) for j in order)
            raise InputError(
                f"{message}. The arguments look swapped; run: galclip {command} {fixed} (with your options)"
            )
    if given in ("index_file", "store_part"):
        fix = f"pass the folder itself: {container(path)}"
    elif given == "survey" and "store" in wanted_kinds:
        fix = f"extract its features first: galclip extract {path} features.zarr"
    elif given == "store" and "index" in wanted_kinds:
        fix = f"build an index from it first: galclip index {path} HEADS index/"
    elif given == "index" and "store" in wanted_kinds:
        try:
            built_from = json.loads((Path(path) / "index.json").read_text()).get("store_absolute")
        except (OSError, ValueError, AttributeError):
            built_from = None
        fix = (
            f"the store this index was built from is {built_from}"
            if built_from
            else "pass the feature store the index was built from"
        )
    elif wanted_kinds and wanted_kinds[0] in WHAT_MAKES:
        fix = f"{DESCRIPTIONS[wanted_kinds[0]]} is {WHAT_MAKES[wanted_kinds[0]]}"
    else:
        fix = f"choose a new {label} path; galclip never writes over {describe(path)}"
    raise InputError(f"{message}; {fix}")


# the commands in pipeline order, with the line 'galclip --help' lists for each
COMMANDS = {
    "mock": "write a mock survey in the AstroCLIP HDF5 + PROVABGS layouts",
    "extract": "frozen encoders over every pair -> Zarr feature store (stage one)",
    "info": "what a feature store holds, without reading bulk data",
    "check": "verify a store, index, heads or catalogue: checksums, completeness, NaNs (--repair)",
    "heads": "train the projection heads on cached features (stage two)",
    "sweep": "train a grid of head settings in one pass over the data",
    "evaluate": "retrieval, zero-shot k-NN regression, UMAP, report.html + metrics.json",
    "index": "FAISS indexes over every pair (exact, or IVF with measured recall)",
    "search": "galaxies most similar to a targetid, in-modal or cross-modal, with the zero-shot prediction",
    "predict": "zero-shot redshift and stellar-mass catalogue (FITS, CSV, ECSV, Parquet) for new galaxies",
    "rank": "find more like these: rank every galaxy from a few marked ones, top N as a catalogue",
    "anomalies": "the most unusual galaxies (mean distance to their nearest neighbours) as a catalogue",
    "serve": "similarity search in the browser (a local web service over an index)",
    "demo": "mock -> extract -> heads -> evaluate -> index -> predict in one go",
}


class PipelineGroup(click.Group):
    """The command list once, in pipeline order, each with its line from ``COMMANDS``."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [n for n in COMMANDS if n in self.commands] + sorted(set(self.commands) - set(COMMANDS))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [
            (name, COMMANDS.get(name) or self.commands[name].get_short_help_str()) for name in self.list_commands(ctx)
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=PipelineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="galclip")
def main(verbose: int, quiet: bool) -> None:
    """galclip: cache-first AstroCLIP for galaxy images and spectra.

    The pipeline: mock (or your survey files) -> extract -> heads -> evaluate / index -> search, serve, predict.
    'galclip COMMAND --help' for each.
    """
    _setup_logging(-1 if quiet else verbose)


@main.command()
@click.option(
    "--pairs", "-n", type=click.IntRange(min=1), default=4000, show_default=True, help="Number of image-spectrum pairs."
)
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output directory.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--labelled-fraction",
    type=click.FloatRange(0, 1),
    default=0.85,
    show_default=True,
    help="Share of pairs with a PROVABGS-like catalogue row.",
)
@click.option(
    "--modality",
    type=click.Choice(["both", "image", "spectrum"]),
    default="both",
    show_default=True,
    help="'image' or 'spectrum': write only that modality (galaxies to predict with 'galclip predict'); "
    "provabgs.h5 still holds their true labels.",
)
@click.option(
    "--layout",
    type=click.Choice(["astroclip", "legacysurvey-fits", "desi-fits", "mmu"]),
    default="astroclip",
    show_default=True,
    help="The files to write the galaxies as: AstroCLIP's HDF5 (survey.h5); Legacy Survey cutout FITS (cutouts/) "
    "with DESI coadds (coadds/); DESI coadds with an image-only AstroCLIP file (images.h5); or the Multimodal "
    "Universe's legacysurvey and desi HDF5 (mmu/). The same galaxies and catalogue in each.",
)
@click.option(
    "--plant",
    default=None,
    metavar="CLASS=RATE,...",
    help="Plant rare classes, recorded in OUT/planted.csv: lenses (strong-lens arcs, lenstronomy) and agn "
    "(broad-line AGN spectra), e.g. lenses=0.01,agn=0.01.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace survey.h5 / provabgs.h5 already in OUT (stores extracted from them then refuse to read them).",
)
@user_errors
def mock(
    pairs: int,
    out: Path,
    seed: int,
    labelled_fraction: float,
    modality: str,
    layout: str,
    plant: str | None,
    overwrite: bool,
) -> None:
    """Write a physically grounded mock survey (survey.h5 + provabgs.h5, or --layout) into OUT."""
    from galclip.config import MockConfig
    from galclip.data.mock.layouts import generate_in_layout, layout_paths
    from galclip.data.mock.plant import parse_plant

    if layout != "astroclip" and modality != "both":
        raise click.BadParameter("--layout writes image-spectrum pairs; leave out --modality", param_hint="--layout")
    planted = tuple(parse_plant(plant).items()) if plant is not None else ()
    summary = generate_in_layout(
        MockConfig(pairs=pairs, seed=seed, labelled_fraction=labelled_fraction, modality=modality, plant=planted),
        out,
        layout,
        overwrite=overwrite,
    )
    what = "pairs" if modality == "both" else f"{modality}-only galaxies"
    click.echo(f"mock survey: {summary['pairs']} {what} ({summary['pairs_per_s']:.0f}/s) -> {out}")
    if summary.get("planted"):
        counts = ", ".join(f"{n} {name}" for name, n in summary["planted"].items())
        click.echo(f"planted: {counts} (the truth: {summary.get('planted_file', out / 'planted.csv')})")
    if layout != "astroclip":
        data = " ".join(str(p) for p in layout_paths(out, layout))
        click.echo(f"as {layout}: {data}\nextract with: galclip extract {data} STORE --catalogue {out / 'provabgs.h5'}")


BACKEND_OPTION = click.option(
    "--backend",
    type=click.Choice(["fused", "eager"]),
    default=None,
    help="How the encoders run on a CPU: fused (oneDNN graphs, the default for a new store) or eager (the modules as "
    "written, bit for bit); a store is resumed with its own [default: the store's, else fused].",
)


def _extract_options(func):
    options = [
        click.option(
            "--image-weights",
            type=click.Path(exists=True, dir_okay=False),
            default=None,
            help="Stein et al. MoCo-v2 Lightning .ckpt (default: seeded random weights).",
        ),
        click.option(
            "--spectrum-weights",
            type=click.Path(exists=True, dir_okay=False),
            default=None,
            help="Official Spender .pt checkpoint (default: seeded random weights).",
        ),
        click.option(
            "--catalogue",
            type=click.Path(exists=True, dir_okay=False),
            default=None,
            help="PROVABGS-layout catalogue for labels (default: DATA/provabgs.h5 if present).",
        ),
        click.option(
            "--orientation",
            type=click.Choice(["survey", "stein"]),
            default=None,
            help="Image orientation fed to the encoder [default: stein with --image-weights (what Stein et "
            "al.'s loader fed the network: the stored (W,H,C) array read as (H,W,C)), else survey "
            "(the cutout's own (C,H,W))].",
        ),
        click.option(
            "--rgb",
            type=click.Choice(["lupton", "stein"]),
            default=None,
            help="grz->RGB mapping [default: stein with --image-weights (the variant those weights were "
            "trained with), else lupton].",
        ),
        click.option(
            "--variants",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="Augmented views per image whose features are stored as (N, K, 2048).",
        ),
        click.option(
            "--spectrum-variants",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="Noise re-draws per spectrum whose features are stored as (N, Ks, 256).",
        ),
        click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True),
        click.option(
            "--rows-per-shard",
            type=click.IntRange(min=1),
            default=256,
            show_default=True,
            help="Rows per store shard: the unit of resumption and of work per rank.",
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=0),
            default=None,
            help="DataLoader workers [default: 0 on CPU, up to 8 on CUDA].",
        ),
        click.option("--compile", "compile_", is_flag=True, help="torch.compile the encoders (pays off on GPUs)."),
        BACKEND_OPTION,
        click.option(
            "--bad-rows",
            type=click.Choice(["fail", "skip"]),
            default="fail",
            show_default=True,
            help="On a NaN/inf/blank input row: stop with its targetid, or quarantine it and go on.",
        ),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ..."),
        click.option(
            "--seed",
            type=int,
            default=0,
            show_default=True,
            help="Seed of the random weights used without checkpoints, and of the augmented views.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@main.command()
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.argument("store", type=click.Path(path_type=Path))
@_extract_options
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="NAME=COLUMN",
    help="Store the catalogue's numeric COLUMN as the label NAME too (repeatable); every PROVABGS property the "
    "catalogue has is stored anyway.",
)
@click.option(
    "--match-radius",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Arcsec: images and spectra that share no TARGETID are paired on the sky within this radius.",
)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@user_errors
def extract(
    data: tuple[Path, ...],
    store: Path,
    image_weights,
    spectrum_weights,
    catalogue,
    orientation,
    rgb,
    variants,
    spectrum_variants,
    batch_size,
    rows_per_shard,
    workers,
    compile_,
    backend,
    bad_rows,
    device,
    seed,
    labels,
    match_radius,
    no_progress,
) -> None:
    """Run the frozen encoders over every pair in DATA and write features into STORE (resumable).

    DATA: survey files or folders of one layout holding pairs, or an image-only set (Legacy Survey cutouts, Multimodal
    Universe legacysurvey) and a spectrum-only set (DESI coadds, Multimodal Universe desi), paired by TARGETID or on
    the sky. Many GPUs or nodes: torchrun --nproc-per-node P -m galclip extract DATA STORE ...
    """
    from galclip.config import ExtractConfig
    from galclip.extract.run import run_extraction

    _require_kinds("extract", [*(("DATA", d, SURVEY_IN) for d in data), ("STORE", store, _out_kinds("store"))])
    cfg = ExtractConfig(
        image_weights=image_weights,
        spectrum_weights=spectrum_weights,
        rgb=rgb,
        orientation=orientation,
        variants=variants,
        spectrum_variants=spectrum_variants,
        batch_size=batch_size,
        rows_per_shard=rows_per_shard,
        num_workers=workers,
        compile=compile_,
        backend=backend,
        bad_rows=bad_rows,
        seed=seed,
        device=device,
        catalogue=catalogue,
        labels=labels,
        match_radius_arcsec=match_radius,
    )
    from galclip.data.catalogue import parse_label_options

    parse_label_options(labels)  # a malformed --label is refused before anything runs
    try:
        s = run_extraction(data[0] if len(data) == 1 else list(data), store, cfg, progress=not no_progress)
    except KeyboardInterrupt:
        _interrupted_extraction(store)
    where = f" (rank {s['rank']}/{s['world_size']})" if s.get("world_size", 1) > 1 else ""
    m = s.get("matching")
    if m:
        click.echo(
            f"paired on the sky (within {match_radius}″): {m['matched']} matched ({m['by_targetid']} by TARGETID, "
            f"{m['by_position']} by position), {m['image_only']} image-only, {m['spectrum_only']} spectrum-only, "
            f"{m['ambiguous']} ambiguous; unmatched: {m['unmatched_file']}"
        )
    if s.get("already_complete"):
        click.echo(f"{store}: already complete ({s['pairs']} pairs); nothing to do{where}")
    elif s["pairs_extracted"] == 0:
        click.echo(f"{store}: no incomplete shard for this rank{where}")
    else:
        click.echo(
            f"extracted {s['pairs_extracted']} pairs at {s['pairs_per_s']:.1f} pairs/s on {s['device']}{where} "
            f"-> {store}"
        )


@main.command()
@click.argument("store", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--targetids",
    is_flag=True,
    help="List every galaxy: targetid, split, labels (CSV on stdout), the targetids 'galclip search --targetid' takes.",
)
@user_errors
def info(store: Path, as_json: bool, targetids: bool) -> None:
    """Print what a feature STORE holds (counts, arrays, completeness, provenance)."""
    from dataclasses import asdict

    from galclip.store import FeatureStore

    _require_kinds("info", [("STORE", store, STORE_IN)])
    opened = FeatureStore.open(store)
    if targetids:
        _echo_targetids(opened)
        return
    inf = opened.info()
    if as_json:
        click.echo(json.dumps(asdict(inf), indent=2))
        return
    click.echo(f"store        {inf.path}")
    click.echo(f"fingerprint  {inf.fingerprint}")
    held = [m for m in ("image", "spectrum") if f"{m}_features" in inf.arrays]
    what = "pairs" if len(held) != 1 else f"{held[0]}s only"
    click.echo(
        f"{what:<12} {inf.n} (train {inf.n_train}, selection {inf.n_selection}, test {inf.n_test}, "
        f"labelled {inf.n_labelled})"
    )
    click.echo(
        f"shards       {inf.n_complete}/{inf.n_shards} complete ({inf.rows_per_shard} rows each)"
        + ("" if inf.complete else "  <- INCOMPLETE: re-run the same 'galclip extract' to finish")
    )
    for name, (shape, dtype) in inf.arrays.items():
        click.echo(f"  {name:<18} {str(shape):<14} {dtype}")
    enc = inf.provenance.get("encoders", {})
    for kind in ("image", "spectrum"):
        w = enc.get(kind, {}).get("weights", {})
        click.echo(f"{kind:<8} weights  {w.get('source')}" + (f" sha256 {w['sha256'][:12]}" if "sha256" in w else ""))
    click.echo(f"preprocessing {json.dumps(inf.provenance.get('preprocessing'))}")
    click.echo(f"code version {inf.provenance.get('code_version')}")


@main.command()
@click.argument("path", metavar="PATH", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--repair",
    is_flag=True,
    help="Store: mark the shards of damaged chunks incomplete, so the same 'galclip extract' re-extracts them.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@user_errors
def check(path: Path, repair: bool, as_json: bool) -> None:
    """Verify a feature store, an index folder, a heads file or folder, or a catalogue: every chunk's checksum and
    every file's SHA-256, naming what is damaged; exit 1 when anything is."""
    from galclip.integrity import check_path

    result = check_path(path, repair=repair)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        for line in result["lines"]:
            click.echo(line)
        for problem in result["problems"]:
            click.echo(f"  PROBLEM: {problem}")
        for q in result.get("quarantine", [])[:20]:
            click.echo(f"  quarantined: targetid {q['targetid']}: {q['reason']}")
        if result.get("repair"):
            click.echo(result["repair"])
        click.echo("OK" if result["ok"] else f"{len(result['problems'])} problem(s)")
    if not result["ok"]:
        sys.exit(1)


def _head_options(func):
    from galclip.config import HeadConfig

    d = HeadConfig()
    options = [
        click.option("--epochs", type=click.IntRange(min=1), default=d.epochs, show_default=True),
        click.option("--batch-size", type=click.IntRange(min=2), default=d.batch_size, show_default=True),
        click.option("--lr", type=float, default=d.lr, show_default=True),
        click.option(
            "--tau",
            type=click.FloatRange(min=0, min_open=True),
            default=d.tau,
            show_default=True,
            help="InfoNCE temperature (fixed, or the starting value with --learn-tau).",
        ),
        click.option("--learn-tau", is_flag=True, help="Learn τ (clamped to >= 0.01), as open_clip does."),
        click.option("--weight-decay", type=float, default=d.weight_decay, show_default=True),
        click.option(
            "--aug-prob",
            type=click.FloatRange(0, 1),
            default=d.aug_prob,
            show_default=True,
            help="Per pair and step, chance to use a stored augmented image view (needs --variants).",
        ),
        click.option("--image-hidden", type=click.IntRange(min=1), default=d.image_hidden, show_default=True),
        click.option(
            "--spectrum-hidden",
            default="x".join(map(str, d.spectrum_hidden)),
            show_default=True,
            help="Spectrum-head hidden widths, e.g. 256x128x128.",
        ),
        click.option(
            "--early-stopping",
            type=click.IntRange(min=0),
            default=d.early_stopping,
            show_default=True,
            help="Stop after this many epochs without improvement on the selection split (0: never).",
        ),
        click.option("--seed", type=int, default=d.seed, show_default=True),
        click.option("--device", default=d.device, show_default=True),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _head_config(
    epochs,
    batch_size,
    lr,
    tau,
    learn_tau,
    weight_decay,
    aug_prob,
    image_hidden,
    spectrum_hidden,
    early_stopping,
    seed,
    device,
):
    from galclip.config import HeadConfig

    try:
        hidden = tuple(int(x) for x in spectrum_hidden.split("x"))
    except ValueError as err:
        raise click.BadParameter(f"--spectrum-hidden {spectrum_hidden!r}: use widths like 256x128x128") from err
    try:
        return HeadConfig(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            tau=tau,
            learn_tau=learn_tau,
            weight_decay=weight_decay,
            aug_prob=aug_prob,
            image_hidden=image_hidden,
            spectrum_hidden=hidden,
            early_stopping=early_stopping or None,
            seed=seed,
            device=device,
        )
    except ValueError as err:
        raise click.BadParameter(str(err)) from err


@main.command()
@click.argument("store", type=click.Path(exists=True, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@_head_options
@click.option("--resume", is_flag=True, help="Continue the interrupted run in OUT exactly where it stopped.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the heads already in OUT (and write into a folder galclip "
    "did not make; only the files 'galclip heads' writes are replaced).",
)
@click.option(
    "--save-every",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds between writes of OUT/train_state.pt, what --resume reads (0: after every epoch).",
)
@click.option("--allow-partial", is_flag=True, help="Use only the complete shards of an unfinished store.")
@click.option("--no-progress", is_flag=True)
@user_errors
def heads(
    store: Path,
    out: Path,
    resume: bool,
    overwrite: bool,
    save_every: float,
    allow_partial: bool,
    no_progress: bool,
    **kwargs,
) -> None:
    """Train the image and spectrum heads on STORE's cached features; write OUT/heads.pt."""
    from galclip.heads.train import stop_words, train_heads

    _require_kinds("heads", [("STORE", store, STORE_IN), ("OUT", out, _out_kinds("heads"))])
    config = _head_config(**kwargs)
    s = train_heads(
        store,
        out,
        config,
        progress=not no_progress,
        resume=resume,
        allow_partial=allow_partial,
        overwrite=overwrite,
        save_every_s=save_every,
    )
    click.echo(
        f"heads: best selection-split loss {s['best_val_loss']:.4f} at epoch {s['best_epoch']}, "
        f"{stop_words(s['stop_reason'], config.epochs)} ({s['epochs_run']} epochs, {s['seconds']:.1f} s: "
        f"{s['wall_seconds_per_epoch']:.2f} s/epoch wall, {s['seconds_per_epoch']:.2f} computing) "
        f"-> {out / 'heads.pt'}"
    )


@main.command()
@click.argument("store", type=click.Path(exists=True, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--grid",
    "grid_items",
    multiple=True,
    required=True,
    help="NAME=v1,v2,... for lr, tau, weight_decay, aug_prob, image_hidden, spectrum_hidden; repeatable.",
)
@_head_options
@click.option("--allow-partial", is_flag=True, help="Use only the complete shards of an unfinished store.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Write into an OUT galclip did not make (only the sweep's own files are replaced).",
)
@click.option("--no-progress", is_flag=True)
@user_errors
def sweep(
    store: Path,
    out: Path,
    grid_items: tuple[str, ...],
    allow_partial: bool,
    overwrite: bool,
    no_progress: bool,
    **kwargs,
) -> None:
    """Train every head configuration of a grid in one pass over the data; write OUT/sweep.csv."""
    from galclip.heads.sweep import parse_grid, run_sweep

    _require_kinds("sweep", [("STORE", store, STORE_IN), ("OUT", out, _out_kinds("sweep"))])
    rows = run_sweep(
        store,
        out,
        _head_config(**kwargs),
        parse_grid(list(grid_items)),
        allow_partial=allow_partial,
        progress=not no_progress,
        overwrite=overwrite,
    )
    keys = [k for k in rows[0] if k not in ("spectrum_hidden", "image_hidden")] if rows else []
    click.echo("  ".join(f"{k:>12}" for k in keys))
    for row in rows:
        click.echo(
            "  ".join(
                f"{'n/a' if row[k] is None else (f'{row[k]:.4g}' if isinstance(row[k], float) else row[k]):>12}"
                for k in keys
            )
        )
    click.echo(f"-> {out / 'sweep.csv'}, best heads in {out / 'best' / 'heads.pt'}")


@main.command()
@click.argument("store", type=click.Path(exists=True, path_type=Path))
@click.argument("heads_path", metavar="HEADS", type=click.Path(exists=True, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("-k", "--k", "k", type=click.IntRange(min=1), default=16, show_default=True, help="k-NN neighbours.")
@click.option("--no-umap", is_flag=True, help="Skip the UMAP figures (saves the numba compile).")
@click.option(
    "--umap-max-points",
    type=click.IntRange(min=4),
    default=20000,
    show_default=True,
    help="UMAP is fitted on a seeded subsample of this many test pairs; the rest are transformed.",
)
@click.option(
    "--umap-cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of cached UMAP coordinates (default: HEADS/umap_cache).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--allow-partial", is_flag=True, help="Use only the complete shards of an unfinished store.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Write into an OUT galclip did not make (only the report's own files are replaced).",
)
@user_errors
def evaluate(
    store: Path,
    heads_path: Path,
    out: Path,
    k: int,
    no_umap: bool,
    umap_max_points: int,
    umap_cache,
    seed: int,
    allow_partial: bool,
    overwrite: bool,
) -> None:
    """Evaluate HEADS on STORE's test pairs (never used to fit or choose them); write OUT/report.html and
    OUT/metrics.json."""
    from galclip.config import EvalConfig
    from galclip.evaluate.pipeline import evaluate_store

    _require_kinds(
        "evaluate", [("STORE", store, STORE_IN), ("HEADS", heads_path, HEADS_IN), ("OUT", out, _out_kinds("report"))]
    )
    t0 = time.perf_counter()
    config = EvalConfig(
        k=k,
        umap=not no_umap,
        umap_max_points=umap_max_points,
        seed=seed,
        umap_cache=None if umap_cache is None else str(umap_cache),
    )
    given_k = click.get_current_context().get_parameter_source("k") != click.core.ParameterSource.DEFAULT
    metrics = evaluate_store(
        store,
        heads_path,
        out,
        config,
        extra_metrics={"timings_s": {}},
        allow_partial=allow_partial,
        overwrite=overwrite,
        strict_k=given_k,
    )
    click.echo(f"report: {out / 'report.html'}  ({time.perf_counter() - t0:.1f} s)")
    _echo_summary(metrics)


def _bytes_option(ctx, param, value):
    from galclip.index.vectors import parse_size

    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from err


@main.command()
@click.argument("paths", nargs=-1, metavar="STORE HEADS OUT", type=click.Path(path_type=Path))
@click.option(
    "--also",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Another store to index with STORE (paired, image-only or spectrum-only, extracted with the same encoders: "
    "a 'galclip predict' work store, say). Repeatable.",
)
@click.option(
    "--append",
    "append_path",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Add this store to an existing index without embedding again what it holds: 'galclip index --append STORE "
    "INDEX'.",
)
@click.option(
    "--max-memory",
    callback=_bytes_option,
    default=None,
    help="A memory budget (4G, 512M, bytes) for the serving process: the best index kind whose resident size fits "
    "it (exact, IVF-Flat, IVF-PQ with an exact re-rank from disk, OPQ). Default: exact up to --exact-max, IVF-Flat "
    "above.",
)
@click.option(
    "--exact-max",
    type=click.IntRange(min=1),
    default=250_000,
    show_default=True,
    help="Largest collection searched exactly (IndexFlatIP); above it, IVF-Flat.",
)
@click.option(
    "--recall-floor",
    type=click.FloatRange(0, 1),
    default=0.95,
    show_default=True,
    help="Refuse an approximate index whose measured recall@10 is lower.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Rows of features read from the store at a time (memory: ~9 kB per row).",
)
@click.option(
    "--no-map", is_flag=True, help="Skip the 2-d UMAP map of the image embeddings (map.npy) that 'galclip serve' draws."
)
@click.option("--allow-partial", is_flag=True, help="Use only the complete shards of an unfinished store.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Write into an OUT galclip did not make (only the index's own files are replaced; nothing else is deleted).",
)
@click.option("--no-progress", is_flag=True)
@user_errors
def index(
    paths: tuple[Path, ...],
    also: tuple[Path, ...],
    append_path: Path | None,
    max_memory: int | None,
    exact_max: int,
    recall_floor: float,
    seed: int,
    batch: int,
    no_map: bool,
    allow_partial: bool,
    overwrite: bool,
    no_progress: bool,
) -> None:
    """Embed every galaxy of STORE (and of each --also store) with HEADS and build one FAISS index per modality in
    OUT; or, with --append STORE INDEX, add a store to an index."""
    from galclip.index.build import append_store, build_indexes

    if append_path is not None:
        if len(paths) != 1 or also:
            raise click.UsageError("with --append give only the index: galclip index --append STORE INDEX")
        _require_kinds("index", [("INDEX", paths[0], INDEX_IN), ("--append", append_path, STORE_IN)])
        side = append_store(
            paths[0], append_path, batch=batch, seed=seed, allow_partial=allow_partial, progress=not no_progress
        )
        out = paths[0]
    else:
        if len(paths) != 3:
            raise click.UsageError(
                f"give STORE HEADS OUT (got {len(paths)} argument(s)); to add a store to an index: "
                "galclip index --append STORE INDEX"
            )
        store, heads_path, out = paths
        for label, path in (("STORE", store), ("HEADS", heads_path)):
            if not path.exists():
                raise click.BadParameter(f"{path}: does not exist", param_hint=label)
        _require_kinds(
            "index",
            [("STORE", store, STORE_IN), ("HEADS", heads_path, HEADS_IN), ("OUT", out, _out_kinds("index"))]
            + [("--also", p, STORE_IN) for p in also],
        )
        side = build_indexes(
            store,
            heads_path,
            out,
            exact_max=exact_max,
            recall_floor=recall_floor,
            seed=seed,
            batch=batch,
            allow_partial=allow_partial,
            progress=not no_progress,
            embedding_map=not no_map,
            overwrite=overwrite,
            also=also,
            max_memory=max_memory,
        )
    _echo_index(side, out)


def _echo_index(side: dict, out: Path) -> None:
    from galclip.index.vectors import IndexSpec

    for m, rec in side["indexes"].items():
        spec = IndexSpec.from_record(rec)
        click.echo(
            f"{m:<8} {rec['ntotal']} vectors  {spec.describe()}  recall@10 {rec['recall@10']:.3f}  "
            f"{rec.get('resident_bytes', 0) / 2**20:.1f} MiB resident"
        )
    for rec in side.get("stores", [])[1:]:
        click.echo(
            f"  + {rec['path']}: {rec['n']} galaxies ({', '.join(rec['modalities'])})"
            + (f", {rec['duplicates']} already indexed skipped" if rec["duplicates"] else "")
        )
    if side.get("max_memory"):
        click.echo(f"within --max-memory {side['max_memory'] / 2**30:.2f} GiB")
    click.echo(f"-> {out} ({side['build_seconds']:.1f} s)")


@main.command()
@click.argument("index_dir", metavar="INDEX", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--targetid",
    type=int,
    default=None,
    help="The query galaxy: in the index, or in the survey file given with --data (not needed when that file holds "
    "one galaxy).",
)
@click.option(
    "--data",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Read the query galaxy from this survey file (any layout: AstroCLIP HDF5, a Legacy Survey cutout, a DESI "
    "coadd, Multimodal Universe) and embed it on the fly (encoders + heads).",
)
@click.option("--ra", type=float, default=None, help="Query by position: RA in degrees (with --dec).")
@click.option("--dec", type=float, default=None, help="Query by position: Dec in degrees (with --ra).")
@click.option(
    "--radius",
    type=float,
    default=1.0,
    show_default=True,
    help="arcsec: a position query snaps to the nearest indexed galaxy within it.",
)
@click.option(
    "--query",
    "query_kind",
    type=click.Choice(["image", "spectrum", "both"]),
    default="image",
    show_default=True,
    help="The query galaxy's modality; both: the mean of its two unit embeddings, renormalised.",
)
@click.option("--target", "target_kind", type=click.Choice(["image", "spectrum"]), default="image", show_default=True)
@click.option("-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option(
    "--filter",
    "windows",
    multiple=True,
    metavar="LABEL=LO:HI",
    help="Only galaxies whose LABEL lies in [LO, HI] (either end may be empty: redshift=0.1:, log_mstar=:10.5); "
    "applied before the top k is cut. Repeatable.",
)
@click.option("--has-spectrum/--no-spectrum", default=None, help="Only galaxies with (or without) a spectrum.")
@click.option("--has-image/--no-image", default=None, help="Only galaxies with (or without) an image.")
@click.option(
    "--dedup",
    type=click.FloatRange(min=0),
    default=None,
    help="arcsec: drop a result closer on the sky than this to a better-ranked one (the fragments of one galaxy); "
    "0 keeps every one. [default: 96 x 0.262 = 25.152, galaxy_search's]",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Draw the query and its neighbours (images as RGB, spectra as curves) into this PNG.",
)
@user_errors
def search(
    index_dir: Path,
    targetid: int,
    data,
    ra: float | None,
    dec: float | None,
    radius: float,
    query_kind: str,
    target_kind: str,
    k: int,
    windows: tuple[str, ...],
    has_spectrum: bool | None,
    has_image: bool | None,
    dedup: float | None,
    as_json: bool,
    plot,
) -> None:
    """Find the K galaxies most similar to a galaxy (by TARGETID, by position, or from a survey file), in-modal or
    cross-modal, filtered and without duplicates."""
    from galclip.index.query import DEDUP_ARCSEC, Filters
    from galclip.index.search import open_index

    _require_kinds("search", [("INDEX", index_dir, INDEX_IN)])
    if data is not None and plot is not None:
        raise click.BadParameter("--plot draws galaxies of the indexed survey; leave it out with --data")
    if (ra is None) != (dec is None):
        raise click.BadParameter("a position query needs both --ra and --dec (degrees)")
    by_position = ra is not None
    if by_position and (targetid is not None or data is not None):
        raise click.BadParameter("give the query one way: --ra/--dec, --targetid, or --data FILE")
    if targetid is None and data is None and not by_position:
        raise click.BadParameter("give the query galaxy: --targetid N, --ra DEG --dec DEG, or --data FILE")
    filters = Filters.parse(windows, has_image=has_image, has_spectrum=has_spectrum)
    options = {
        "query": query_kind,
        "target": target_kind,
        "k": k,
        "filters": filters or None,
        "dedup_arcsec": DEDUP_ARCSEC if dedup is None else dedup,
    }
    idx = open_index(index_dir)
    if data is not None:
        from galclip.embed_survey import search_survey_pair

        result = search_survey_pair(idx, data, targetid, **options)
    elif by_position:
        result = idx.search_position(ra, dec, radius, **options)
    else:
        result = idx.search(targetid, **options)
    targetid = result["query"]["targetid"]
    if plot is not None:
        from galclip.evaluate.survey_rows import plot_search_result

        result["plot"] = str(plot_search_result(idx, result, plot))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    position = result["query"].get("position")
    if position:
        click.echo(
            f"RA {position['ra']:g}, Dec {position['dec']:g}: nearest indexed galaxy {targetid} at "
            f"{position['separation_arcsec']:.2f} arcsec"
        )
    if result.get("filters") and result["filters"].get("reason"):
        click.echo(result["filters"]["reason"])
    fmt = lambda v, f: "      -" if v is None else format(v, f)
    click.echo(
        f"query {targetid} ({query_kind}; z {fmt(result['query']['redshift'], '.4f')}, "
        f"log M* {fmt(result['query']['log_mstar'], '.2f')}) -> {target_kind}"
    )
    click.echo(" rank  similarity            targetid  redshift  log M*")
    for h in result["neighbours"]:
        star = "  <- its own partner" if h["is_partner"] else ""
        star += "" if h.get("has_spectrum", True) else "  (no spectrum)"
        star += "" if h.get("has_image", True) else "  (no image)"
        click.echo(
            f"{h['rank']:5d}  {h['similarity']:10.4f}  {h['targetid']:18d}  {fmt(h['redshift'], '8.4f')}  "
            f"{fmt(h['log_mstar'], '6.2f')}{star}"
        )
    p = result["prediction"]
    if p is not None:
        click.echo(
            f"zero-shot prediction (k {p['k']} over the index's labelled training galaxies, calibrated 16th-84th "
            f"percentile), nearest cos {p['similarity']:.3f}{'  OUT OF DISTRIBUTION' if p['ood'] else ''}:"
        )
        for name, title in result["labels"].items():
            if name in p:
                e = p[name]
                click.echo(f"  {title:<40} {e['value']:10.4f}  ({e['lo']:.4f} - {e['hi']:.4f})")
    if plot is not None:
        click.echo(f"plot: {plot}")


@main.command()
@click.argument("index_dir", metavar="INDEX", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--data",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Survey file(s) or folder the thumbnails and spectra are read from [default: the files the "
    "index's store was extracted from]. Repeatable.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; anything but loopback exposes the service (it has no authentication).",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@user_errors
def serve(index_dir: Path, data: tuple[Path, ...], host: str, port: int) -> None:
    """Search INDEX in the browser: a local, read-only web service with a search page and a JSON API."""
    import uvicorn

    from galclip.serve.app import create_app, load_service

    _require_kinds("serve", [("INDEX", index_dir, INDEX_IN)])
    sock = _bind(host, port)  # before anything is loaded or printed: a taken port is the one-line message
    service = load_service(index_dir, list(data) or None)
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "binding %s: anyone who can reach this machine can use the service; it has no authentication", host
        )
    shown = f"[{host}]" if ":" in host else host
    bound = sock.getsockname()[1]
    click.echo(f"galclip serve: http://{shown}:{bound}/  ({len(service.index)} galaxies; Ctrl-C stops)")
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning"))
    server.run(sockets=[sock])


def _bind(host: str, port: int):
    """A listening socket on host:port, or a one-line error naming the port and the fix."""
    import errno
    import socket

    from galclip.errors import GalclipError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise GalclipError(
                f"--port {port}: {host}:{port} is already in use (another 'galclip serve'?); pass "
                "another --port, or --port 0 for any free one"
            ) from err
        if err.errno in (errno.EACCES, errno.EPERM):
            raise GalclipError(
                f"--port {port}: not allowed to listen there (ports below 1024 need root); pass a --port from 1024 up"
            ) from err
        raise GalclipError(
            f"--host {host}: cannot listen on it ({err.strerror}); pass an address of this machine, "
            "e.g. --host 127.0.0.1"
        ) from err
    sock.listen(128)
    return sock


@main.command()
@click.argument("index_dir", metavar="INDEX", type=click.Path(exists=True, path_type=Path))
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--modality",
    type=click.Choice(["image", "spectrum", "auto"]),
    default="auto",
    show_default=True,
    help="Predict from the images or the spectra; auto: whichever INPUT holds (images when both).",
)
@click.option(
    "-k",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Neighbours among the labelled reference galaxies.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["fits", "csv", "ecsv", "parquet", "hats"]),
    default=None,
    help="Catalogue format [default: from OUT's suffix: .csv, .ecsv, .parquet, else fits]. hats: OUT is a folder of "
    "HEALPix-partitioned Parquet that lsdb.read_hats opens (needs RA/Dec; pip install 'galclip[hats]').",
)
@click.option(
    "--truth",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="True labels (PROVABGS-layout catalogue, or a feature store): also score the catalogue.",
)
@click.option(
    "--reference",
    type=click.Choice(["train", "all"]),
    default="train",
    show_default=True,
    help="Reference galaxies: the labelled training split of INDEX's store, or every labelled galaxy.",
)
@click.option(
    "--work",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Feature store for INPUT's features (resumable) [default: OUT's stem + .features.zarr].",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for metrics.json (and the truth report) [default: OUT's stem + _report].",
)
@click.option(
    "--image-weights",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="The Stein checkpoint INDEX's store was extracted with, if it has moved (checked by SHA-256).",
)
@click.option(
    "--spectrum-weights",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="The Spender checkpoint INDEX's store was extracted with, if it has moved (checked by SHA-256).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--rows-per-shard", type=click.IntRange(min=1), default=256, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="DataLoader workers [default: 0 on CPU, up to 8 on CUDA].",
)
@click.option(
    "--bad-rows",
    type=click.Choice(["fail", "skip"]),
    default="fail",
    show_default=True,
    help="On a NaN/inf/blank input row: stop, or write it with NaN predictions and go on.",
)
@click.option("--device", default="auto", show_default=True)
@BACKEND_OPTION
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an OUT file galclip did not write, and write into a report "
    "folder galclip did not make (only predict's own files are replaced).",
)
@click.option("--no-progress", is_flag=True)
@user_errors
def predict(
    index_dir: Path,
    input_path: Path,
    out: Path,
    modality: str,
    k: int,
    fmt,
    truth,
    reference: str,
    work,
    report_dir,
    image_weights,
    spectrum_weights,
    batch_size,
    rows_per_shard,
    workers,
    bad_rows,
    device,
    backend,
    overwrite,
    no_progress,
) -> None:
    """Zero-shot redshift and stellar-mass catalogue OUT for the galaxies in INPUT (survey files holding only
    images, only spectra, or both; or a feature store), from their nearest labelled neighbours in INDEX.

    Many GPUs or nodes: torchrun --nproc-per-node P -m galclip predict INDEX INPUT OUT ...
    """
    from galclip.predict.run import predict_catalogue

    _require_kinds(
        "predict",
        [
            ("INDEX", index_dir, INDEX_IN),
            ("INPUT", input_path, ("survey", "store")),
            ("OUT", out, _out_kinds("catalogue")),
        ],
    )
    m = predict_catalogue(
        index_dir,
        input_path,
        out,
        modality=modality,
        k=k,
        fmt=fmt,
        truth=truth,
        reference=reference,
        work=work,
        report_dir=report_dir,
        image_weights=image_weights,
        spectrum_weights=spectrum_weights,
        device=device,
        batch_size=batch_size,
        rows_per_shard=rows_per_shard,
        num_workers=workers,
        bad_rows=bad_rows,
        backend=backend,
        progress=not no_progress,
        overwrite=overwrite,
    )
    if "catalogue" not in m:  # a torchrun rank other than 0: it extracted its shards, rank 0 writes the catalogue
        return
    click.echo(
        f"catalogue: {m['n_galaxies']} galaxies from their {m['modality']}s ({m['n_predicted']} predicted, "
        f"{m['n_ood']} flagged out of distribution) -> {out}"
    )
    t = m.get("truth")
    if t:
        z, ms = t["redshift"], t["log_mstar"]
        f = lambda v, spec: "n/a" if v is None else format(v, spec)
        click.echo(
            f"  redshift  σ_NMAD {f(z['sigma_nmad'], '.4f')}  η {f(z['outlier_fraction'], '.3f')}  "
            f"bias {f(z['bias'], '+.4f')}  coverage {f(z.get('coverage'), '.2f')} (n {z['n']})"
        )
        click.echo(
            f"  log M*    scatter {f(ms['scatter_nmad_dex'], '.3f')} dex  bias {f(ms['bias_dex'], '+.3f')} dex  "
            f"coverage {f(ms.get('coverage'), '.2f')} (n {ms['n']})"
        )
        click.echo(f"report:  {Path(m['metrics_file']).parent / 'report.html'}")
    click.echo(f"metrics: {m['metrics_file']}")


_FORMAT_OPTION = click.option(
    "--format",
    "fmt",
    type=click.Choice(["fits", "csv", "ecsv", "parquet"]),
    default=None,
    help="Catalogue format [default: from OUT's suffix: .csv, .ecsv, .parquet, else fits].",
)
_SPACE_OPTION = click.option(
    "--space",
    type=click.Choice(["embedding", "image-features", "spectrum-features"]),
    default="embedding",
    show_default=True,
    help="Rank in the shared 128-d embedding, or in the image (2048-d) or spectrum (256-d) encoder features.",
)


def _discover_options(func):
    for option in reversed(
        [
            click.option("-n", "n", type=int, default=100, show_default=True, help="Candidates to write."),
            _SPACE_OPTION,
            _FORMAT_OPTION,
            click.option("--seed", type=int, default=0, show_default=True),
            click.option(
                "--report",
                "report_dir",
                type=click.Path(file_okay=False, path_type=Path),
                default=None,
                help="Folder for metrics.json [default: OUT's stem + _report].",
            ),
            click.option("--json", "as_json", is_flag=True, help="Print the candidates as JSON."),
            click.option("--overwrite", is_flag=True, help="Replace an OUT file galclip did not write."),
            click.option("--no-progress", is_flag=True),
        ]
    ):
        func = option(func)
    return func


def _echo_ranking(m: dict, as_json: bool, out: Path) -> None:
    if as_json:
        click.echo(json.dumps(m["result"], indent=1, allow_nan=False))
        return
    r = m["result"]
    click.echo(
        f"{m['n']} {'candidates' if r['kind'] == 'rank' else 'most unusual galaxies'} of {r['scored']} in "
        f"{r['space']} ({r['scorer']}; {r['seconds']:.1f} s, {r['seconds_per_million']:.0f} s per million) -> {out}"
    )
    for c in r["candidates"][:5]:
        click.echo(f"  {c['rank']:>4}  {c['targetid']}  score {c['score']:.4f}")
    click.echo(f"metrics: {m['metrics_file']}")


@main.command()
@click.argument("index_dir", metavar="INDEX", type=click.Path(exists=True, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--positive",
    "positive",
    required=True,
    help="Galaxies 'more like this': comma-separated targetids, a file of one per line, or a marks file from the page.",
)
@click.option("--negative", "negative", default=None, help="Galaxies 'not this', as --positive.")
@_discover_options
@user_errors
def rank(
    index_dir: Path, out: Path, positive, negative, n, space, fmt, seed, report_dir, as_json, overwrite, no_progress
):
    """Find more like these: score every galaxy of INDEX from the marked ones and write the top -n to the catalogue
    OUT (the marked galaxies left out). One positive: similarity to it; more: a logistic regression against random
    unlabelled galaxies, and the marked negatives."""
    from galclip.discover.marks import combine, ids_argument
    from galclip.discover.run import rank_catalogue

    _require_kinds("rank", [("INDEX", index_dir, INDEX_IN), ("OUT", out, _out_kinds("catalogue"))])
    marks = combine(ids_argument(positive, "--positive"), *([ids_argument(negative, "--negative")] if negative else []))
    m = rank_catalogue(
        index_dir, out, marks, space, n, seed, fmt, report_dir, overwrite, progress=not (no_progress or as_json)
    )
    _echo_ranking(m, as_json, out)


@main.command()
@click.argument("index_dir", metavar="INDEX", type=click.Path(exists=True, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("-k", "k", type=int, default=None, help="Neighbours whose mean distance is the score [default: 10].")
@click.option(
    "--sample", type=int, default=None, help="Random galaxies the neighbours are found among [default: 20000]."
)
@_discover_options
@user_errors
def anomalies(index_dir: Path, out: Path, k, sample, n, space, fmt, seed, report_dir, as_json, overwrite, no_progress):
    """The -n most unusual galaxies of INDEX (mean cosine distance to their -k nearest among --sample random ones),
    as the catalogue OUT."""
    from galclip.discover.run import anomaly_catalogue

    _require_kinds("anomalies", [("INDEX", index_dir, INDEX_IN), ("OUT", out, _out_kinds("catalogue"))])
    m = anomaly_catalogue(
        index_dir, out, space, n, k, sample, seed, fmt, report_dir, overwrite, progress=not (no_progress or as_json)
    )
    _echo_ranking(m, as_json, out)


def _interrupted_extraction(store_path: Path) -> None:
    """Ctrl-C during extraction: say what is kept and the command that resumes; exit 130 (as a shell does)."""
    from galclip.errors import GalclipError
    from galclip.integrity import resume_command
    from galclip.store import FeatureStore

    try:
        store = FeatureStore.open(store_path)
    except GalclipError:
        click.echo(f"\ninterrupted before {store_path} was created; nothing was written", err=True)
        sys.exit(130)
    done = int(store.complete_mask().sum())
    click.echo(
        f"\ninterrupted: {done} of {store.n_shards} shards of {store_path} are complete and kept (only the "
        f"shards in flight are redone). Resume with:\n  {resume_command(store)}",
        err=True,
    )
    sys.exit(130)


def _echo_targetids(store) -> None:
    """Every galaxy of a store as CSV on stdout: targetid, split, then each label (redshift, log_mstar, ...; empty
    where unlabelled)."""
    import csv

    import numpy as np

    from galclip.split import SPLIT_NAMES

    labels, split = store.labels(), store.split()
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["targetid", "split", *labels])
    columns = [values.tolist() for values in labels.values()]
    for i, (tid, code) in enumerate(zip(store.targetids().tolist(), split.tolist())):
        writer.writerow([tid, SPLIT_NAMES[code], *("" if not np.isfinite(c[i]) else f"{c[i]:.6g}" for c in columns)])


def _echo_summary(metrics: dict) -> None:
    r2 = metrics.get("zero_shot_r2", {})
    click.echo("zero-shot k-NN R²      redshift  log M*")
    for src in ("image", "spectrum", "cross", "raw_image", "raw_spectrum", "photometry"):
        row = r2.get(src, {})
        fmt = lambda v: "   n/a" if v is None else f"{v:6.3f}"
        click.echo(f"  {src:<20} {fmt(row.get('redshift'))}  {fmt(row.get('log_mstar'))}")
    for target, entry in (metrics.get("zero_shot_best") or {}).items():
        click.echo(f"  best for {target}: {entry['best']}")
    for d in ("im2sp", "sp2im"):
        r = metrics.get("retrieval", {}).get(d, {})
        if r:
            click.echo(
                f"  {d}: recall@1 {r['recall@1']:.3f}  recall@10 {r['recall@10']:.3f}  "
                f"median rank {r['median_rank']:.0f}"
            )


@main.command()
@click.option("--pairs", "-n", type=click.IntRange(min=64), default=4000, show_default=True)
@click.option(
    "--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("galclip-demo"), show_default=True
)
@click.option("--epochs", type=click.IntRange(min=1), default=80, show_default=True)
@click.option("--no-umap", is_flag=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Run in an OUT that is not an earlier demo's, provided each folder "
    "the demo writes is missing or galclip's own output; nothing galclip did not write is deleted.",
)
@user_errors
def demo(pairs: int, out: Path, epochs: int, no_umap: bool, seed: int, overwrite: bool) -> None:
    """mock -> extract -> heads -> evaluate -> index -> predict on a mock survey; prints the report and the serve
    command."""
    from galclip.demo import run_demo

    metrics = run_demo(pairs=pairs, out=out, epochs=epochs, umap=not no_umap, seed=seed, overwrite=overwrite)
    click.echo(f"\nreport:  {out / 'report' / 'report.html'}\nmetrics: {out / 'report' / 'metrics.json'}")
    _echo_summary(metrics)
    t = metrics["timings_s"]
    click.echo("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in t.items()))
    pred = metrics.get("predict")
    if pred:
        z = pred["truth"]["redshift"]
        click.echo(
            f"\nzero-shot catalogue of {pred['n_galaxies']} image-only galaxies: {pred['catalogue']}\n"
            f"  redshift σ_NMAD {z['sigma_nmad']:.4f}, outliers η {z['outlier_fraction']:.3f}, coverage "
            f"{z['coverage']:.2f}; report {Path(pred['metrics_file']).parent / 'report.html'}"
        )
    command = sys.argv[0] if sys.argv[0].endswith("galclip") else "galclip"  # as this demo was started
    click.echo(f"\nsearch in the browser:  {command} serve {out / 'index'}")


if __name__ == "__main__":
    main()
