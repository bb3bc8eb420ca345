"""``galclip check PATH``: verify whatever galclip wrote at PATH — a feature store, an index folder, heads, or a
catalogue — against its checksums, and name what is damaged. An orchestrator, like the CLI: it reads each kind
through the package that owns it."""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from galclip.errors import GalclipError

# the write failures that are the machine's, not galclip's: the message says what to do instead of a traceback
OS_FAULTS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EIO: "input/output error",
}


def os_fault(err: BaseException) -> OSError | None:
    """The OSError behind ``err`` (itself, or in its cause/context chain) when it is one of ``OS_FAULTS``."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in OS_FAULTS:
            return err
        err = err.__cause__ or err.__context__
    return None


def os_fault_message(err: OSError) -> str:
    """One line: the path, the error, and what to do."""
    where = err.filename or "a file galclip was writing"
    fix = {
        errno.ENOSPC: "free space",
        errno.EDQUOT: "free space or raise the quota",
        errno.EACCES: "make the folder writable",
        errno.EPERM: "make the folder writable",
        errno.EROFS: "write to a writable file system",
        errno.EIO: "check the disk",
    }[err.errno]
    return (
        f"{where}: {OS_FAULTS[err.errno]} ({err.strerror or err}); {fix} and re-run the same command: nothing "
        "written so far is lost (finished work is kept, unfinished work is redone)"
    )


@dataclass(frozen=True)
class ArtefactFormat:
    """One of the file formats galclip writes, as ``galclip check`` sees it: its name, how to tell it at a path, its
    check (the format module's verify, with what it is in words) and whether ``--repair`` mends it in place."""

    name: str
    holds: Callable[[Path], bool]
    check: Callable[[Path, bool], dict]
    repairs: bool = False


def _is_heads(path: Path) -> bool:
    return path.suffix == ".pt" or (path.is_dir() and (path / "heads.pt").exists())


def _is_catalogue(path: Path) -> bool:
    from galclip.predict.catalogue import SUFFIXES

    return path.is_file() and path.suffix.lower() in SUFFIXES


# the registry 'galclip check' loops over, in the order a path is tried
FORMATS = (
    ArtefactFormat("store", lambda p: (p / "zarr.json").exists(), lambda p, repair: _check_store(p, repair), True),
    ArtefactFormat("index", lambda p: (p / "index.json").exists(), lambda p, _: _check_index(p)),
    ArtefactFormat("heads", _is_heads, lambda p, _: _check_heads(p)),
    ArtefactFormat("catalogue", _is_catalogue, lambda p, _: _check_catalogue(p)),
    ArtefactFormat("hats catalogue", lambda p: _is_hats(p), lambda p, _: _check_hats(p)),
)


def check_path(path: str | Path, repair: bool = False) -> dict:
    """Verify PATH: {"ok", "kind", "lines" (what it is), "problems" (each damaged thing, named), ...}: the first of
    ``FORMATS`` that holds PATH checks it."""
    path = Path(path)
    for fmt in FORMATS:
        if fmt.holds(path):
            if repair and not fmt.repairs:
                raise GalclipError(
                    "--repair repairs feature stores; an index is rebuilt with 'galclip index', heads are "
                    "retrained with 'galclip heads', a catalogue is written again with 'galclip predict'"
                )
            return fmt.check(path, repair)
    from galclip.kinds import container, describe, kind_of

    kind = kind_of(path)
    fix = (
        f"check the folder it belongs to: galclip check {container(path)}"
        if kind in ("index_file", "store_part")
        else ""
    )
    raise GalclipError(
        f"{path}: is {describe(path)}; 'galclip check' verifies a feature store (a folder with "
        "zarr.json), an index folder (index.json), heads (heads.pt or its folder) or a catalogue "
        "('galclip predict' FITS, CSV, ECSV or Parquet)" + (f"; {fix}" if fix else "")
    )


def _check_store(path: Path, repair: bool) -> dict:
    from galclip.store import FeatureStore
    from galclip.store.check import check_store, repair_store

    store = FeatureStore.open(path, mode="r+" if repair else "r", validate=False)
    result = check_store(store)
    held = [m for m in ("image", "spectrum") if f"{m}_features" in result["arrays"]]
    what = "pairs" if len(held) != 1 else f"{held[0]}-only galaxies"
    lines = [
        f"{path}: feature store (format {result['format_version']}), {result['n']} {what}, "
        f"{result['n_complete']}/{result['n_shards']} shards complete, arrays {', '.join(result['arrays'])}"
    ]
    if not result["checksums"]:
        lines.append(
            "  NOTE: format 1: its chunks carry no checksums, so damage to them can go unnoticed; extract "
            "again into a new store to get them"
        )
    if repair and result["damaged"]:
        done = repair_store(store, result["damaged"])
        result["repair"] = _repair_message(store, done)
        result["repaired_shards"] = done["shards"]
        result["rebuild_chunks"] = [_chunk_name(d) for d in done["rebuild"]]
        result["missing_inputs"] = done["missing_inputs"]
    elif repair:
        result["repair"] = "nothing to repair: no damaged chunk"
    return {"kind": "store", "lines": lines, **result}


def _chunk_name(record: dict) -> str:
    return f"'{record['array']}'" + (f" shard {record['shard']}" if record["shard"] is not None else "")


def _repair_message(store, done: dict) -> str:
    """What 'galclip check --repair' did to ``store`` (``repair_store``'s ``done``) and what to run next: the shards
    marked incomplete, the chunks the next extraction rebuilds from the input files (naming them, and any that is
    not there) and what cannot be repaired in place."""
    command = resume_command(store)
    shards, rebuild = done["shards"], done["rebuild"]
    named = ", ".join(map(_chunk_name, rebuild[:5])) + (", ..." if len(rebuild) > 5 else "")
    files = "; ".join(f"{what} {path}" for what, path in done["inputs"]) or "none needed"
    parts = []
    if shards and not rebuild:
        parts.append(
            f"repaired: marked {len(shards)} shard(s) incomplete {shards[:20]}; to re-extract only those, run "
            f"the extraction again with the store's own settings:\n  {command}"
        )
    elif rebuild:
        marked = f"marked {len(shards)} shard(s) incomplete {shards[:20]} and " if shards else ""
        redo = ", and re-extracts only the incomplete shards" if shards else ""
        parts.append(
            f"repaired: {marked}scheduled {len(rebuild)} damaged chunk(s) for rebuild ({named}). They hold "
            "what extraction derives from its input files, not features: the same 'galclip extract' command "
            f"rebuilds them from those files ({files}) without running an encoder{redo}. Run the extraction "
            f"again with the store's own settings:\n  {command}"
        )
    if parts:
        parts.append("Extraction is deterministic, so the store will be bitwise identical to an uninterrupted run")
    if done["missing_inputs"]:
        missing = "; ".join(done["missing_inputs"])
        parts.append(
            f"But {len(done['missing_inputs'])} input file(s) are not there: {missing}. Put them back where "
            "they were, then run the command above; or restore the store from a copy"
        )
    if done["unrepairable"]:
        first = done["unrepairable"][0]
        back = "put the image checkpoint back and run the command above, " if first.get("input_missing") else ""
        parts.append(
            f"Not repairable in place: {len(done['unrepairable'])} damaged chunk(s) of data written once, at "
            f"creation (e.g. {_chunk_name(first)}: {first['why']}): {back}restore the store from a copy, or "
            "extract again into a new store"
        )
    return "\n".join(parts)


def resume_command(store) -> str:
    """The command that finishes (re-extracts the incomplete shards of) ``store``: 'galclip extract' with the
    store's recorded options, or for a predict work store the advice to run that 'galclip predict' again."""
    from galclip.extract.provenance import extract_command

    modalities = (store.provenance.get("config") or {}).get("modalities") or ("image", "spectrum")
    if len(modalities) == 1:
        return f"the same 'galclip predict ... --work {store.path}' that wrote it (its work store)"
    return extract_command(store.provenance, store.path)


def _check_index(path: Path) -> dict:
    from galclip.index.format import REPAIR, read_sidecar, verify_files
    from galclip.index.search import open_index

    lines, problems = [], []
    try:
        sidecar = read_sidecar(path)
    except GalclipError as err:
        return {"kind": "index", "ok": False, "lines": [f"{path}: index folder"], "problems": [str(err)]}
    lines.append(f"{path}: index folder ({sidecar.get('format')}), {sidecar.get('n')} galaxies")
    if not sidecar.get("files"):
        lines.append(
            "  NOTE: built before galclip 0.3: it records no file hashes; rebuild it with 'galclip index' to get them"
        )
    problems += [f"{p}: {REPAIR}" for p in verify_files(path, sidecar, True)]
    if not problems:
        try:
            index = open_index(path)
            index.check_heads()
            index.open_store()
        except GalclipError as err:
            problems.append(str(err))
    return {"kind": "index", "ok": not problems, "lines": lines, "problems": problems}


def _check_heads(path: Path) -> dict:
    from galclip.heads.checkpoint import checkpoint_file, verify

    file = checkpoint_file(path)
    problems, record = verify(file)
    if problems:
        return {"kind": "heads", "ok": False, "lines": [f"{file}: heads"], "problems": problems}
    lines = [f"{file}: heads ({record.get('format')}), best epoch {record.get('best_epoch')}"]
    if "content_sha256" not in record:
        lines.append("  NOTE: written before galclip 0.3: it carries no SHA-256; retrain to get one")
    return {"kind": "heads", "ok": True, "lines": lines, "problems": []}


def _is_hats(path: Path) -> bool:
    from galclip.predict.hats_catalogue import is_galclip_hats

    return is_galclip_hats(path)


def _catalogue_report(kind: str, line: str, problems: list[str], again: str) -> dict:
    """``galclip check``'s record of a catalogue: each problem with the command that writes it again."""
    return {
        "kind": kind,
        "ok": not problems,
        "lines": [line],
        "problems": [f"{p}; write it again with '{again}'" for p in problems],
    }


def _check_hats(path: Path) -> dict:
    from galclip.predict.hats_catalogue import verify_hats

    line = f"{path}: HATS catalogue (HEALPix-partitioned Parquet)"
    return _catalogue_report("hats catalogue", line, verify_hats(path), "galclip predict --format hats")


def _check_catalogue(path: Path) -> dict:
    from galclip.predict.catalogue import catalogue_problems

    return _catalogue_report("catalogue", f"{path}: catalogue", catalogue_problems(path), "galclip predict")
