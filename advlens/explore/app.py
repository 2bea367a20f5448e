"""The explorer's web app (FastAPI): a static page and the HTTP API it uses (scriptable too).

Every response carries a strict Content-Security-Policy (scripts, styles and fonts from the app only, images
also as data URLs); every error is HTTP 4xx with ``{"error": "one line"}`` — a request can be wrong, the
server does not crash on it. See ``docs/guide/explorer.md`` for the API.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from .. import __version__
from .._checks import AdvlensError
from .live import LiveParams
from .session import MAX_UPLOAD_BYTES, ApiError, Session

__all__ = ["create_app", "CSP"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
CSP = ("default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; font-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY"}
_STRICT = ConfigDict(extra="forbid")
Name = Annotated[str, Field(min_length=1, max_length=512)]
#: a study-mode filter (an exact value of a results column; omitted = all)
Filter = Annotated[str | None, Query(max_length=512)]


class AttackIn(BaseModel):
    """The attack of a run: its name, L∞ budget and iterations (None = the attack's defaults)."""

    model_config = _STRICT
    method: Name = "pgd"
    eps: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = None
    steps: Annotated[int, Field(ge=1, le=200)] | None = None


class RunIn(BaseModel):
    """``POST /api/run``: an image (``source`` + ``index``, or ``image`` = base64 / data URL) and what to do."""

    model_config = _STRICT
    model: Name | None = None
    source: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    index: Annotated[int, Field(ge=0, le=10**9)] = 0
    image: Annotated[str, Field(min_length=1)] | None = None
    attack: AttackIn = Field(default_factory=AttackIn)
    strength: Annotated[float, Field(gt=0, le=16, allow_inf_nan=False)] = 1.0
    method: Name = "gradcam"
    layers: Literal["all"] | Annotated[list[Name], Field(min_length=1, max_length=512)] = "all"
    k: Annotated[int, Field(ge=1, le=32)] = 8
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0


class StudyMapsIn(BaseModel):
    """``POST /api/study/maps``: one study image at one strength with one explainer."""

    model_config = _STRICT
    image: Name
    strength: Annotated[float, Field(gt=0, le=16, allow_inf_nan=False)] = 1.0
    explainer: Name = "gradcam"
    k: Annotated[int, Field(ge=1, le=32)] = 8


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())[:500]}, status_code=status, headers=_HEADERS)


def create_app(model: str | None = None, images: str | None = None, weights: str | None = None,
               run_dir: str | Path | None = None, model_options: dict | None = None, device: str = "cpu") -> FastAPI:
    """The explorer app: live mode, or study mode over the finished study/demo folder ``run_dir``.

    Args:
        model: the default model (registered name or reference); weights, model_options: its checkpoint and
            reference options. images: an image source offered first. device: where models run.

    Raises:
        AdvlensError: ``run_dir`` is not a finished study or demo folder.
    """
    from .study import StudyFolder

    study = StudyFolder(run_dir) if run_dir is not None else None
    if study is not None:  # the study's model, with its own weights and options
        model, weights, model_options = study.spec.model, study.spec.weights, study.spec.model_options
    session = Session(model, images, weights, model_options, device)
    app = FastAPI(title="advlens explorer", version=__version__, docs_url=None, redoc_url=None)
    app.state.session, app.state.study = session, study

    @app.middleware("http")
    async def guard(request: Request, call_next):
        size = request.headers.get("content-length", "0")
        if not size.isdigit() or int(size) > MAX_UPLOAD_BYTES * 4 // 3 + 4096:
            return _error(413, f"request body larger than {MAX_UPLOAD_BYTES // 2**20} MB of image")
        response = await call_next(request)
        response.headers.update(_HEADERS)
        return response

    @app.exception_handler(AdvlensError)
    async def advlens_error(request: Request, exc: AdvlensError):
        return _error(400, str(exc))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error(exc.status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(422, f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):  # a bug: logged in full, one line to the client
        log.exception("explorer request %s failed", request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server's log")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/health")
    def health() -> dict:
        return {"status": "ok", "version": __version__}

    @app.get("/api/options")
    def options() -> dict:
        return session.options("study" if study is not None else "live")

    @app.get("/api/status")
    def status() -> dict:
        return dict(session.status)

    @app.get("/api/images")
    def images_(model: Annotated[str | None, Query(max_length=512)] = None,
                source: Annotated[str | None, Query(max_length=4096)] = None,
                limit: Annotated[int, Query(ge=1, le=256)] = 24) -> dict:
        from .encode import png_url

        m = session.model(model or session.default_model)
        batch, count = session.batch(m, source or session.sources[0])
        labels = batch.labels or []
        shown = []
        for i in range(min(limit, len(batch))):
            y = int(batch.y[i]) if batch.y is not None else -1
            shown.append({"index": i, "name": batch.names[i], "label": labels[y] if 0 <= y < len(labels) else None,
                          "thumbnail": png_url(batch.x[i], 96)})
        return {"images": shown, "count": count}

    @app.post("/api/run", response_model=None)
    def run(body: RunIn) -> JSONResponse:
        name = body.model or session.default_model
        if body.image is not None:
            def get_image(m):
                return session.uploaded_image(m, body.image)
        else:
            source = body.source or session.sources[0]

            def get_image(m):
                return session.source_image(m, source, body.index)
        layers = body.layers if isinstance(body.layers, str) else tuple(body.layers)
        p = LiveParams(body.attack.method, body.attack.eps, body.attack.steps, body.strength, body.method, layers,
                       body.k, body.seed)
        return JSONResponse(session.run(name, get_image, p))  # plain JSON: no per-field re-encoding of the maps

    if study is not None:
        _study_routes(app, session, study)
    return app


def _study_routes(app: FastAPI, session: Session, study) -> None:
    """``/api/study/...``: the folder's summary, filtered results, per-layer curves, maps, files."""

    @app.get("/api/study")
    def summary() -> dict:
        return study.summary()

    @app.get("/api/study/results")
    def results(image: Filter = None, strength: Filter = None, condition: Filter = None, explainer: Filter = None,
                layer: Filter = None, limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> dict:
        return study.rows({"image": image, "strength": strength, "condition": condition, "explainer": explainer,
                           "layer": layer}, limit)

    @app.get("/api/study/curve")
    def curve(metric: Annotated[str, Query(max_length=64)] = "cosine", image: Filter = None, strength: Filter = None,
              explainer: Filter = None) -> dict:
        return study.curve(metric, {"image": image, "strength": strength, "explainer": explainer})

    @app.post("/api/study/maps", response_model=None)
    def maps(body: StudyMapsIn) -> JSONResponse:
        spec = study.spec
        attack = dict(spec.attack)
        method = attack.pop("method")
        frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in attack.items()))
        p = LiveParams(method, None, None, body.strength, body.explainer, "all", body.k, spec.seed, frozen)
        model, x = study.image(body.image)
        session.adopt(model)
        return JSONResponse(session.run(model.name, lambda m: (x, f"study:{body.image}"), p))

    @app.get("/api/study/file")
    def file(path: Annotated[str, Query(min_length=1, max_length=1024)]) -> FileResponse:
        return FileResponse(study.file(path), headers=_HEADERS)
