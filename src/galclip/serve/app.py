"""The search service: a thin HTTP layer over :class:`galclip.index.search.Index`.

Each handler turns its parameters into one call of the index (or of the survey reader) and
shapes the JSON; the search logic is the index's, so ``GET /api/search`` returns exactly the
records ``galclip search --json`` prints, the zero-shot prediction included (the index's one predictor).
The service only reads: the index folder, the store's metadata and the survey files it was
started with. The page and its scripts are static files of this package; nothing is fetched
from elsewhere.
"""

import csv
import io
import logging
import tempfile
import threading
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from galclip.data.sources import open_survey
from galclip.data.survey import recorded_survey_problems
from galclip.discover import Index as DiscoveryIndex
from galclip.discover.candidates import result as ranking_result
from galclip.discover.candidates import write_catalogue
from galclip.discover.marks import MAX_BYTES as MARKS_MAX_BYTES
from galclip.discover.marks import Marks, marks_csv, marks_from_text, marks_json
from galclip.discover.rank import Ranking
from galclip.errors import DamagedDataError, GalclipError
from galclip.index.query import DEDUP_ARCSEC, SNAP_ARCSEC, Filters
from galclip.index.search import Index, NotIndexed, float_or_none, open_index
from galclip.serve.galaxies import SurveyGalaxies, UnknownGalaxy
from galclip.split import SPLIT_NAMES
from galclip.vocabulary import MODALITIES

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
K_MAX = 100  # the most neighbours one request may ask for
BINS_MAX = 7781  # the DESI grid itself
UPLOAD_MAX_BYTES = 32 * 2**20  # one galaxy's cutout (~0.3 MB) or coadd (~1 MB) fits many times over
UPLOADS_AT_ONCE = 2  # uploads embedded at the same time (each runs both encoders); more wait for a 429
RANK_MAX = 1000  # the most candidates one ranking may ask for
MARKS_MAX = 10_000  # the most galaxies one request may mark each way
DOWNLOAD_TYPES = {
    "json": "application/json",
    "csv": "text/csv",
    "fits": "application/fits",
    "ecsv": "text/plain",
    "parquet": "application/vnd.apache.parquet",
}
SpaceName = Literal["embedding", "image-features", "spectrum-features"]
CatalogueFormat = Literal["csv", "fits", "ecsv", "parquet"]
Modality = Literal["image", "spectrum"]
QueryModality = Literal["image", "spectrum", "both"]


class UploadRefused(GalclipError):
    """An upload that is too large, or one too many at once: its HTTP status rides along."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class EmbeddingQuery(BaseModel):
    """The body of ``POST /api/search``."""

    embedding: list[float] = Field(description="a 128-d vector in the shared space (normalised here)")
    target: Modality = "image"
    k: int = Field(16, ge=1, le=K_MAX)


class RankQuery(BaseModel):
    """The body of ``POST /api/rank``: marked targetids (numbers or, as the page sends them, strings of digits)."""

    positive: list[int] = Field(min_length=1, max_length=MARKS_MAX, description="targetids marked 'more like this'")
    negative: list[int] = Field([], max_length=MARKS_MAX, description="targetids marked 'not this'")
    space: SpaceName = "embedding"
    n: int = Field(100, ge=1, le=RANK_MAX, description=f"candidates, 1 to {RANK_MAX}")


class MarksBody(BaseModel):
    """The body of ``POST /api/marks/file``: the page's marks, to be written as a marks file."""

    positive: list[int] = Field([], max_length=MARKS_MAX)
    negative: list[int] = Field([], max_length=MARKS_MAX)

    def marks(self) -> Marks:
        marks = Marks(tuple(dict.fromkeys(self.positive)), tuple(dict.fromkeys(self.negative)))
        marks.check()
        return marks


@dataclass
class SearchService:
    """What the handlers share: the index, the survey rows, the embedding map (computed once, on first use)."""

    index: Index
    galaxies: SurveyGalaxies
    _map: dict | None = None
    _map_lock: threading.Lock = field(default_factory=threading.Lock)
    _uploads: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(UPLOADS_AT_ONCE))

    def search(
        self,
        targetid: int | None,
        query: str,
        target: str,
        k: int,
        ra: float | None = None,
        dec: float | None = None,
        radius: float = SNAP_ARCSEC,
        filters: Filters | None = None,
        dedup_arcsec: float = DEDUP_ARCSEC,
    ) -> dict:
        """``Index.search``'s records, its zero-shot prediction included: from ``targetid``, or from the indexed galaxy
        nearest to (ra, dec) within ``radius`` arcsec."""
        options = {"query": query, "target": target, "k": k, "filters": filters or None, "dedup_arcsec": dedup_arcsec}
        if (ra is None) != (dec is None):
            raise GalclipError("a position query needs both ra and dec (degrees)")
        if ra is not None:
            if targetid is not None:
                raise GalclipError("give the query one way: targetid, or ra and dec")
            return self.index.search_position(ra, dec, radius, **options)
        if targetid is None:
            raise GalclipError("give the query galaxy: targetid, or ra and dec (degrees)")
        return self.index.search(targetid, **options)

    def search_file(self, upload: UploadFile, query: str | None, target: str, k: int, **options) -> dict:
        """Embed the one galaxy of an uploaded survey file (a Legacy Survey cutout, a DESI coadd, any layout galclip
        reads) with the index's encoders and heads, and search from it. The file lives in a temporary folder for the
        request only; at most ``UPLOADS_AT_ONCE`` at a time, each at most ``UPLOAD_MAX_BYTES``."""
        from galclip.embed_survey import search_survey_pair

        if not self._uploads.acquire(blocking=False):
            raise UploadRefused(f"{UPLOADS_AT_ONCE} uploads are being embedded already; try again in a moment", 429)
        try:
            name = Path(upload.filename or "upload").name or "upload"
            with tempfile.TemporaryDirectory(prefix="galclip-upload-") as tmp:
                path = Path(tmp) / name
                size = 0
                with open(path, "wb") as f:
                    while chunk := upload.file.read(1 << 20):
                        size += len(chunk)
                        if size > UPLOAD_MAX_BYTES:
                            raise UploadRefused(
                                f"{name}: larger than the {UPLOAD_MAX_BYTES // 2**20} MiB an upload may be; send one "
                                "galaxy's cutout or coadd",
                                413,
                            )
                        f.write(chunk)
                if size == 0:
                    raise GalclipError(f"{name}: the upload is empty; choose a survey file")
                result = search_survey_pair(self.index, path, None, query=query, target=target, k=k, **options)
            result["query"]["source"] = f"upload: {name}"
            return result
        finally:
            self._uploads.release()

    def search_embedding(self, vector: list[float], target: str, k: int) -> dict:
        return self.index.search_embedding(np.asarray(vector, dtype=np.float64), target=target, k=k)

    def galaxy(self, targetid: int) -> dict:
        """Indexed or not, split, catalogue labels, and where the survey stores the galaxy."""
        pos = self.index.find(targetid)
        in_survey = bool(self.galaxies.holds(np.array([targetid]))[0])
        if pos < 0 and not in_survey:
            raise NotIndexed(
                f"targetid {targetid} is neither in the index at {self.index.path} nor in the survey "
                "files; check the number"
            )
        rows = self.index.rows
        return {
            "targetid": int(targetid),
            "indexed": pos >= 0,
            "partner_indexed": pos >= 0 and all(self.index.vector_ids(m, [pos])[0] >= 0 for m in MODALITIES),
            **{f"has_{m}": pos >= 0 and bool(self.index.vector_ids(m, [pos])[0] >= 0) for m in MODALITIES},
            "split": SPLIT_NAMES.get(int(rows["split"][pos])) if pos >= 0 else None,
            **(self.index.label_record(pos) if pos >= 0 else dict.fromkeys(self.index.label_names)),
            "survey": self.galaxies.where(targetid) if in_survey else None,
        }

    def rank(self, query: RankQuery) -> Ranking:
        """The ranking of every galaxy by the marks (:meth:`galclip.discover.Index.ranking`)."""
        return self.index.ranking(query.positive, query.negative, query.space, query.n)

    def anomalies(self, space: str, n: int) -> Ranking:
        """The ``n`` most unusual galaxies in ``space`` (computed once per space, then kept)."""
        return self.index.anomaly_ranking(space, n)

    def marks_file(self, body: MarksBody, fmt: str) -> tuple[bytes, str]:
        """The page's marks as a marks file (:mod:`galclip.discover.marks`): (its bytes, a file name)."""
        marks = body.marks()
        text = marks_json(marks, Path(self.index.path).name) if fmt == "json" else marks_csv(marks)
        return text.encode(), f"galclip-marks.{fmt}"

    def candidates_file(self, ranking: Ranking, fmt: str) -> tuple[bytes, str]:
        """A ranking as a catalogue file in ``fmt`` (written in a temporary folder, read back, removed: the service
        writes nothing where it serves from): (its bytes, a file name)."""
        name = f"galclip-{ranking.kind}-{ranking.space}-n{len(ranking.positions)}.{fmt}"
        with tempfile.TemporaryDirectory(prefix="galclip-candidates-") as tmp:
            path = write_catalogue(self.index, ranking, Path(tmp) / name, fmt)
            return path.read_bytes(), name

    def read_marks(self, upload: UploadFile) -> dict:
        """An uploaded marks file (JSON or CSV as the page downloads them, or one targetid per line: positives),
        each targetid checked against the index: {"positive": [str], "negative": [str]}."""
        name = Path(upload.filename or "marks").name or "marks"
        data = upload.file.read(MARKS_MAX_BYTES + 1)
        if len(data) > MARKS_MAX_BYTES:
            raise UploadRefused(f"{name}: larger than the {MARKS_MAX_BYTES >> 20} MiB a marks file may be", 413)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise GalclipError(f"{name}: not a text file; a marks file is the JSON or CSV the page downloads") from None
        marks = marks_from_text(text, name)
        if not isinstance(marks, Marks):
            marks = Marks(positive=marks)
        marks.check()
        for tid in (*marks.positive, *marks.negative):
            if self.index.find(tid) < 0:
                raise NotIndexed(
                    f"{name}: targetid {tid} is not in this index ({len(self.index)} galaxies); the marks file was "
                    "made on another index"
                )
        return {"positive": [str(t) for t in marks.positive], "negative": [str(t) for t in marks.negative]}

    def embedding_map(self) -> dict:
        """2-d UMAP coordinates of every indexed galaxy's image embedding with its redshift: the index's
        ``map.npy`` when ``galclip index`` wrote one, else fitted once here (kept in memory)."""
        with self._map_lock:
            if self._map is None:
                coords = self.index.embedding_map()
                with_image = self.index.members("image")  # the map's points, in its order
                self._map = {
                    "targetid": [str(t) for t in self.index.rows["targetid"][with_image].tolist()],
                    "x": np.round(coords[:, 0], 4).tolist(),
                    "y": np.round(coords[:, 1], 4).tolist(),
                    "redshift": [float_or_none(z) for z in self.index.rows["redshift"][with_image]],
                }
            return self._map


def survey_files_and_preprocessing(index: Index, data: list[str | Path] | None) -> tuple[list, int, str]:
    """The survey files to read (``data``, else those every store of the index was extracted from) and the first
    store's image crop and grz->RGB mapping."""
    crop, rgb, files = 96, "lupton", []
    for which in range(len(index.store_records())):
        try:
            store = index.open_store(which)
            if which == 0:
                crop, rgb = store.image_display()
            files += [f for f in store.survey_files() if f not in files]
        except GalclipError as err:
            if not data:
                raise GalclipError(f"{err}; the service needs the store's survey files: pass them with --data") from err
            if which == 0:
                logger.warning("%s; thumbnails use the default crop %d and %s colours", err, crop, rgb)
    if data:
        files = list(data)
    if not files:
        raise GalclipError(f"{index.path}: the store names no survey files; pass them with --data")
    return files, crop, rgb


def load_service(index_path: str | Path, data: list[str | Path] | None = None) -> SearchService:
    """Open the index, check its heads, and map its galaxies to survey rows; refuses what ``galclip search`` refuses."""
    # every file against its SHA-256, once, at start; a discovery index also ranks
    index = open_index(index_path, verify_hashes=True, cls=DiscoveryIndex)
    index.check_heads()
    files, crop, rgb = survey_files_and_preprocessing(index, data)
    changed = []
    for which in range(len(index.store_records())):
        try:
            store = index.open_store(which)
        except GalclipError:
            continue  # without the store there is no record to check the files against (only their targetids)
        own = [f for f in files if f in store.survey_files()] or files
        # checked and closed before the service opens the files: HDF5 shares one open file per process
        with closing(open_survey(own, require=())) as reader:
            changed = recorded_survey_problems(store.provenance, reader, store.targetids)
        if changed:
            raise GalclipError(
                f"{changed[0]}. {store.path} was extracted from the earlier file, so the page would show "
                "other galaxies than those it names: put the original back (or pass it with --data), or "
                "extract the new file and build a new index"
            )
    galaxies = SurveyGalaxies(files, crop=crop, rgb=rgb)
    missing = index.rows["targetid"][~galaxies.holds(index.rows["targetid"])]
    if missing.size:
        names = ", ".join(map(str, files))
        raise GalclipError(
            f"{names}: no row with targetid {int(missing[0])} (and {missing.size - 1} more of the "
            f"index's {len(index)} galaxies); pass the survey files the index was built from with --data"
        )
    for modality in MODALITIES:  # the zero-shot predictor's reference sets, built once at start, not on a request
        index.reference(modality)
    return SearchService(index, galaxies)


def create_app(service: SearchService) -> FastAPI:
    """The FastAPI application over one service."""
    app = FastAPI(
        title="galclip search",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        description="Similarity search over galclip's FAISS indexes; every parameter is checked and "
        "a bad one gets a 4xx answer that names it.",
    )

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors():
            loc = list(err.get("loc", ()))
            where = ".".join(str(p) for p in (loc[1:] if loc[:1] in (["query"], ["path"], ["body"]) else loc))
            problems.append(
                f"{where or 'request'}: {err.get('msg')}"
                + (f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], (dict, list)) else "")
            )
        return JSONResponse(status_code=422, content={"error": "; ".join(problems), "detail": jsonable(exc.errors())})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):  # unknown routes, wrong methods: one shape
        message = f"{request.url.path}: {exc.detail}" + (
            "; the API is listed at /openapi.json" if exc.status_code in (404, 405) else ""
        )
        return JSONResponse(status_code=exc.status_code, content={"error": message}, headers=exc.headers)

    @app.exception_handler(NotIndexed)
    async def not_indexed(request: Request, exc: NotIndexed):
        return JSONResponse(status_code=404, content={"error": str(exc)})

    @app.exception_handler(UnknownGalaxy)
    async def unknown_galaxy(request: Request, exc: UnknownGalaxy):
        return JSONResponse(status_code=404, content={"error": str(exc)})

    @app.exception_handler(DamagedDataError)
    async def damaged(request: Request, exc: DamagedDataError):  # the data on disk, not the request: 503, go on
        logger.error("%s", exc)
        return JSONResponse(status_code=503, content={"error": str(exc)})

    @app.exception_handler(UploadRefused)
    async def upload_refused(request: Request, exc: UploadRefused):
        return JSONResponse(status_code=exc.status, content={"error": str(exc)})

    @app.exception_handler(GalclipError)
    async def user_error(request: Request, exc: GalclipError):
        return JSONResponse(status_code=422, content={"error": str(exc)})

    def refine(
        filter: list[str] = Query([], description="LABEL=LO:HI (either end may be empty), repeatable"),
        has_spectrum: bool | None = Query(None, description="only galaxies with (true) or without (false) a spectrum"),
        has_image: bool | None = Query(None, description="only galaxies with (true) or without (false) an image"),
        dedup: float = Query(DEDUP_ARCSEC, ge=0, description="arcsec: drop results this close to a better one; 0 off"),
    ) -> dict:
        return {"filters": Filters.parse(filter, has_image, has_spectrum), "dedup_arcsec": dedup}

    def position(
        ra: float | None = Query(None, description="query by position: RA in degrees"),
        dec: float | None = Query(None, description="query by position: Dec in degrees"),
        radius: float = Query(SNAP_ARCSEC, gt=0, description="arcsec: snap to the nearest indexed galaxy within it"),
    ) -> dict:
        return {"ra": ra, "dec": dec, "radius": radius}

    @app.get(
        "/api/search",
        summary="Neighbours of an indexed galaxy, with its zero-shot prediction (k = 16, train-split reference)",
    )
    def search(
        targetid: int | None = None,
        query: QueryModality = "image",
        target: Modality = "image",
        k: int = Query(16, ge=1, le=K_MAX, description=f"neighbours, 1 to {K_MAX}"),
        where: dict = Depends(position),
        narrowed: dict = Depends(refine),
    ) -> dict:
        return service.search(targetid, query, target, k, **where, **narrowed)

    @app.post("/api/search/file", summary="Neighbours of the galaxy in an uploaded survey file, embedded here")
    def search_file(
        file: UploadFile = File(description="one galaxy's Legacy Survey cutout FITS, DESI coadd, or any layout"),
        query: QueryModality | None = Form(None, description="default: the modality the file holds (image first)"),
        target: Modality = Form("image"),
        k: int = Form(16, ge=1, le=K_MAX),
        narrowed: dict = Depends(refine),
    ) -> dict:
        return service.search_file(file, query, target, k, **narrowed)

    @app.post("/api/search", summary="Neighbours of any vector in the shared space")
    def search_vector(body: EmbeddingQuery) -> dict:
        return service.search_embedding(body.embedding, body.target, body.k)

    @app.get("/api/search.csv", summary="The result table of GET /api/search as CSV")
    def search_csv(
        targetid: int | None = None,
        query: QueryModality = "image",
        target: Modality = "image",
        k: int = Query(16, ge=1, le=K_MAX),
        where: dict = Depends(position),
        narrowed: dict = Depends(refine),
    ) -> Response:
        result = service.search(targetid, query, target, k, **where, **narrowed)
        targetid = result["query"]["targetid"]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(
            [
                "query_targetid",
                "query_modality",
                "target_modality",
                "rank",
                "targetid",
                "similarity",
                *service.index.label_names,
                "has_image",
                "has_spectrum",
                "is_partner",
            ]
        )
        for n in result["neighbours"]:
            writer.writerow(
                [
                    targetid,
                    query,
                    target,
                    n["rank"],
                    n["targetid"],
                    f"{n['similarity']:.6f}",
                    *("" if n[name] is None else n[name] for name in service.index.label_names),
                    int(n["has_image"]),
                    int(n["has_spectrum"]),
                    int(n["is_partner"]),
                ]
            )
        name = f"galclip-{targetid}-{query}-to-{target}-k{k}.csv"
        return Response(
            buffer.getvalue(), media_type="text/csv", headers={"Content-Disposition": f'attachment; filename="{name}"'}
        )

    def download(content: bytes, name: str, fmt: str) -> Response:
        return Response(
            content, media_type=DOWNLOAD_TYPES[fmt], headers={"Content-Disposition": f'attachment; filename="{name}"'}
        )

    @app.post("/api/rank", summary="Find more like these: every galaxy scored from the marked ones, the top n")
    def rank(body: RankQuery) -> dict:
        return ranking_result(service.index, service.rank(body))

    @app.post("/api/rank/catalogue", summary="POST /api/rank's candidates as a catalogue file (galclip rank's)")
    def rank_catalogue(body: RankQuery, format: CatalogueFormat = "csv") -> Response:
        return download(*service.candidates_file(service.rank(body), format), format)

    @app.get("/api/anomalies", summary="The n most unusual galaxies (mean distance to their nearest neighbours)")
    def anomalies(space: SpaceName = "embedding", n: int = Query(100, ge=1, le=RANK_MAX)) -> dict:
        return ranking_result(service.index, service.anomalies(space, n))

    @app.get("/api/anomalies/catalogue", summary="GET /api/anomalies as a catalogue file (galclip anomalies')")
    def anomalies_catalogue(
        space: SpaceName = "embedding", n: int = Query(100, ge=1, le=RANK_MAX), format: CatalogueFormat = "csv"
    ) -> Response:
        return download(*service.candidates_file(service.anomalies(space, n), format), format)

    @app.post("/api/marks/file", summary="The marks in the body as a marks file galclip rank --positive reads")
    def marks_file(body: MarksBody, format: Literal["json", "csv"] = "json") -> Response:
        return download(*service.marks_file(body, format), format)

    @app.post("/api/marks", summary="Read an uploaded marks file (JSON or CSV from the page); nothing is stored")
    def marks(file: UploadFile = File(description="a marks file the page downloaded, or one targetid per line")):
        return service.read_marks(file)

    @app.get("/api/galaxy/{targetid}", summary="Labels, split, survey file and group of one galaxy")
    def galaxy(targetid: int) -> dict:
        return service.galaxy(targetid)

    @app.get(
        "/api/image/{targetid}.png",
        summary="The g,r,z cutout as RGB, as the store's preprocessing maps it",
        response_class=Response,
    )
    def image(targetid: int) -> Response:
        return Response(
            service.galaxies.image_png(targetid), media_type="image/png", headers={"Cache-Control": "max-age=3600"}
        )

    @app.get("/api/spectrum/{targetid}", summary="The spectrum on the DESI grid, averaged into bins for display")
    def spectrum(targetid: int, bins: int = Query(400, ge=2, le=BINS_MAX)) -> dict:
        return {"targetid": targetid, **service.galaxies.spectrum(targetid, bins)}

    @app.get("/api/map", summary="2-d UMAP coordinates of every indexed galaxy with its redshift")
    def embedding_map() -> dict:
        return service.embedding_map()

    @app.get("/api/random", summary="A random indexed galaxy")
    def random_galaxy() -> dict:
        rows = service.index.rows["targetid"]
        return {"targetid": int(rows[np.random.default_rng().integers(len(rows))])}

    @app.get("/api/health", summary="Liveness and what is served")
    def health() -> dict:
        return {
            "status": "ok",
            "galaxies": len(service.index),
            "modalities": list(MODALITIES),
            "k_max": K_MAX,
            "rank_max": RANK_MAX,
            "spaces": list(service.index.spaces()),
            "index": str(service.index.path),
        }

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def jsonable(errors: list) -> list:
    """Validation errors with only JSON types (pydantic may put exceptions in ``ctx``)."""
    out = []
    for err in errors:
        err = dict(err)
        if "ctx" in err:
            err["ctx"] = {k: str(v) for k, v in err["ctx"].items()}
        if "input" in err and not isinstance(err["input"], (str, int, float, bool, type(None))):
            err["input"] = str(err["input"])[:200]
        out.append(err)
    return out
