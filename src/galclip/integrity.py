"""``galclip check PATH``: verify whatever galclip wrote at PATH — a feature store, an index folder, heads, or a
catalogue — against its checksums, and name what is damaged. An orchestrator, like the CLI: it reads each kind
through the package that owns it."""

from __future__ import annotations

import errno
from pathlib import Path

from galclip.errors import GalclipError

# the write failures that are the machine's, not galclip's: the message says what to do instead of a traceback
OS_FAULTS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
             errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
             errno.EROFS: "read-only file system", errno.EIO: "input/output error"}


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
    fix = {errno.ENOSPC: "free space", errno.EDQUOT: "free space or raise the quota",
           errno.EACCES: "make the folder writable", errno.EPERM: "make the folder writable",
           errno.EROFS: "write to a writable file system", errno.EIO: "check the disk"}[err.errno]
    return (f"{where}: {OS_FAULTS[err.errno]} ({err.strerror or err}); {fix} and re-run the same command: nothing "
            "written so far is lost (finished work is kept, unfinished work is redone)")


def check_path(path: str | Path, repair: bool = False) -> dict:
    """Verify PATH: {"ok", "kind", "lines" (what it is), "problems" (each damaged thing, named), ...}."""
    path = Path(path)
    if (path / "zarr.json").exists():
        return _check_store(path, repair)
    if repair:
        raise GalclipError("--repair repairs feature stores; an index is rebuilt with 'galclip index', heads are "
                           "retrained with 'galclip heads', a catalogue is written again with 'galclip predict'")
    if (path / "index.json").exists():
        return _check_index(path)
    if path.suffix == ".pt" or (path.is_dir() and (path / "heads.pt").exists()):
        return _check_heads(path)
    from galclip.kinds import CATALOGUE_SUFFIXES, container, describe, kind_of

    kind = kind_of(path)
    if path.is_file() and (kind == "catalogue" or (kind == "file" and path.suffix.lower() in CATALOGUE_SUFFIXES)):
        return _check_catalogue(path)
    fix = (f"check the folder it belongs to: galclip check {container(path)}" if kind in ("index_file", "store_part")
           else "")
    raise GalclipError(f"{path}: is {describe(path)}; 'galclip check' verifies a feature store (a folder with "
                       "zarr.json), an index folder (index.json), heads (heads.pt or its folder) or a catalogue "
                       "('galclip predict' FITS or CSV)" + (f"; {fix}" if fix else ""))


def _check_store(path: Path, repair: bool) -> dict:
    from galclip.store import FeatureStore
    from galclip.store.check import check_store, repair_store

    store = FeatureStore.open(path, mode="r+" if repair else "r", validate=False)
    result = check_store(store)
    held = [m for m in ("image", "spectrum") if f"{m}_features" in result["arrays"]]
    what = "pairs" if len(held) != 1 else f"{held[0]}-only galaxies"
    lines = [f"{path}: feature store (format {result['format_version']}), {result['n']} {what}, "
             f"{result['n_complete']}/{result['n_shards']} shards complete, arrays {', '.join(result['arrays'])}"]
    if not result["checksums"]:
        lines.append("  NOTE: format 1: its chunks carry no checksums, so damage to them can go unnoticed; extract "
                     "again into a new store to get them")
    if repair and result["damaged"]:
        done = repair_store(store, result["damaged"])
        msg = (f"repaired: marked {len(done['shards'])} shard(s) incomplete {done['shards'][:20]}; to re-extract only "
               f"those, run the extraction again with the store's own settings:\n  {resume_command(store)}\n"
               "Extraction is deterministic, so the store will be bitwise identical to an uninterrupted run")
        if done["unrepairable"]:
            msg += (f". Not repairable in place: {len(done['unrepairable'])} damaged chunk(s) of data written once, "
                    f"at creation (e.g. '{done['unrepairable'][0]['array']}'): restore the store from a copy, or extract "
                    "again into a new store")
        result["repair"] = msg
        result["repaired_shards"] = done["shards"]
    elif repair:
        result["repair"] = "nothing to repair: no damaged chunk"
    return {"kind": "store", "lines": lines, **result}


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
        lines.append("  NOTE: built before galclip 0.3: it records no file hashes; rebuild it with 'galclip index' "
                     "to get them")
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
    from galclip.heads.checkpoint import checkpoint_file, load_heads

    file = checkpoint_file(path)
    try:
        _, record = load_heads(file)
    except GalclipError as err:
        return {"kind": "heads", "ok": False, "lines": [f"{file}: heads"], "problems": [str(err)]}
    lines = [f"{file}: heads ({record.get('format')}), best epoch {record.get('best_epoch')}"]
    if "content_sha256" not in record:
        lines.append("  NOTE: written before galclip 0.3: it carries no SHA-256; retrain to get one")
    return {"kind": "heads", "ok": True, "lines": lines, "problems": []}


def _check_catalogue(path: Path) -> dict:
    from galclip.predict.catalogue import catalogue_problems

    problems = catalogue_problems(path)
    return {"kind": "catalogue", "ok": not problems, "lines": [f"{path}: catalogue"],
            "problems": [f"{p}; write it again with 'galclip predict'" for p in problems]}
