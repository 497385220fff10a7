"""The HTTP/JSON face of ``cos3d serve`` (FastAPI): routes, request schemas (the OpenAPI document at
``/openapi.json``, a browsable one at ``/docs``), the token check, the body-size limit, per-request
deadlines and one-line errors.

Routes (``RUN`` is a run's name, ``GET /runs`` lists them):

====================================  ==========================================================
``GET  /health``                      liveness, version, runs served
``GET  /runs``                        the runs: name, folder, loaded, version
``GET  /runs/RUN``                    one run (loads it): Gaussians, levels, views, test views
``POST /runs/RUN/query``              a query request → the answer (objects, selected ids, reason)
``POST /runs/RUN/masks``              ``{"query": .., "view": "16", "protocol": ..}`` → PNG (255 = selected)
``POST /runs/RUN/export``             ``{"query": .., "format": "ply"|"spz"|"points"}`` → the selection's file
``POST /runs/RUN/pick``               ``{"query": .., "T_base_scene": 4x4, "approach", "k", "gripper", ..}``
``POST /runs/RUN/place``              ``{"query": .., "T_base_scene": 4x4, "clearance", "k", ..}``
``GET  /runs/RUN/objects``            the scene-wide objects (``?vocabulary=a,b``; default: training names)
====================================  ==========================================================

Every error is ``{"error": "one line", "status": code}``: 400 a bad prompt or malformed JSON, 401 a
missing/wrong token, 404 an unknown run or route, 409 a run not trained yet, 413 a body over the limit,
422 a field of the wrong type, 503 a run that could not be loaded or a replica
that died, 504 past the deadline. ``?timeout_s=`` asks for a shorter deadline than the server's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import logging
import math
import time
from typing import Any, Literal, Union

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from cos3d import __version__
from cos3d.core.errors import Cos3dError, ServeError, brief
from cos3d.serve.handlers import Blob

log = logging.getLogger("cos3d.serve")

Number = float


class QueryRequest(BaseModel):
    """A prompt: the keywords of ``TrainedScene.query`` (cos3d.serve.handlers)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, description='Text prompt, e.g. "red mug", "the robot\'s head".')
    view: str | None = Field(None, description="A scene frame (its name) as the reference image: lifted into 3D.")
    image_b64: str | None = Field(None, description="Reference image, base64 PNG/JPEG (an uploaded photo).")
    image_path: str | None = Field(None, description="Reference image file on the server's machine (loopback servers only).")
    box: Union[list[Number], str, None] = Field(None, description="[x0, y0, x1, y1] pixels of the reference image.")
    mask_b64: str | None = Field(None, description="Region mask, base64 PNG (non-zero = region).")
    mask_path: str | None = None
    scribble_b64: str | None = Field(None, description="Scribble, base64 PNG (non-zero = scribble).")
    scribble_path: str | None = None
    points: Union[list[list[Number]], str, None] = Field(None, description='[[x, y], ...] or "x,y;x,y,0".')
    point_labels: list[int] | None = Field(None, description="1 object, 0 background, one per point.")
    click: Union[str, list[Union[str, Number]], dict[str, Union[str, Number]], None] = Field(
        None, description='"VIEW:x,y", [view, x, y] or {"view", "x", "y"}: the object under a pixel.')
    within: str | None = Field(None, description='Parent prompt of a part query ("head" within "robot").')
    within_object: int | None = Field(None, description="Parent object id (as an earlier answer gave it).")
    level: Literal["s", "m", "l"] | None = None
    refine: Literal["fast", "compiled", "numpy", "reference"] | None = None
    lift: bool | None = Field(None, description="False: embed a scene frame's region instead of lifting it.")
    combine: Literal["sum", "and"] | None = Field(None, description="Text + image: sum (default) or and.")
    parts: bool | None = Field(None, description='False: read "handle of the mug" as one name.')
    points_out: bool = Field(False, description="Return each object's points.")
    selected: bool = Field(True, description="Return the selected Gaussian ids (and each object's).")


class MasksRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: QueryRequest
    view: str = Field(..., description="The scene frame to render the mask in.")
    protocol: Literal["occlusion", "selected"] = "occlusion"


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: QueryRequest
    format: Literal["ply", "spz", "points"] = "ply"


class _Targets(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: QueryRequest
    T_base_scene: list[list[Number]] | None = Field(None, description="4x4 scene → robot base (default identity).")
    correspondences: list[list[list[Number]]] | None = Field(None, description="[points_scene, points_base], K x 3 each.")
    up: list[Number] | None = None
    k: int | None = Field(None, ge=1)
    points: bool = Field(False, description="Return each target's points.")


class PickRequest(_Targets):
    approach: Literal["top", "side", "auto"] | None = None
    gripper: dict[str, Number] | None = Field(None, description="GripperSpec fields (metres).")
    reach_from: list[Number] | None = Field(None, description="Where the arm's base stands (base frame, 3 numbers).")


class PlaceRequest(_Targets):
    clearance: Number | None = None


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body over the limit of {limit / 2**20:g} MiB (--max-upload-mb); "
                              "send a smaller image")


class Guard:
    """ASGI middleware: the bearer token (when the server has one) and the body-size limit, checked before
    a route runs: on ``Content-Length`` at once, on a body without one as it arrives."""

    def __init__(self, app: Any, *, token: str | None, max_body: int) -> None:
        self.app, self.token, self.max_body = app, token, max_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.token is not None:
            auth = headers.get("authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else headers.get("x-cos3d-token", "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return await _error(401, "missing or wrong token: send 'Authorization: Bearer TOKEN'")(scope, receive, send)
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await _error(400, f"bad Content-Length {length!r}")(scope, receive, send)
            if int(length) > self.max_body:
                return await _error(413, BodyTooLarge(self.max_body).detail)(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            msg = await receive()
            if msg.get("type") == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(self.max_body)  # FastAPI passes an HTTPException from the body read on
            return msg

        return await self.app(scope, limited, send)


def _finite(x: Any) -> Any:
    """``x`` with NaN/inf floats as None (JSON has no such numbers)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _json(out: dict, headers: dict[str, str]) -> JSONResponse:
    try:
        return JSONResponse(out, headers=headers)
    except ValueError:  # a NaN or an infinity somewhere
        return JSONResponse(_finite(out), headers=headers)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split()), "status": status}, status_code=status)


def _validation_line(exc: RequestValidationError) -> tuple[int, str]:
    errs = exc.errors()
    if not errs:
        return 422, "invalid request"
    e = errs[0]
    if e.get("type") == "json_invalid":
        return 400, f"malformed JSON body ({e.get('ctx', {}).get('error', e.get('msg'))})"
    loc = ".".join(str(x) for x in e.get("loc", ())[1:])
    if e.get("type") == "missing" and not loc:
        return 422, "a JSON body is required"
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return 422, f"{loc or 'body'}: {e.get('msg')}{more}"


def build_app(executor: Any, *, token: str | None = None, timeout: float = 30.0, max_body: int = 16 << 20,
              workers: int = 32) -> FastAPI:
    """The FastAPI application over ``executor`` (:class:`cos3d.serve.executor.Executor`)."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cos3d-serve")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        yield
        pool.shutdown(wait=False, cancel_futures=True)
        for fn in app.state.on_shutdown:  # before uvicorn re-raises a SIGTERM it caught
            try:
                fn()
            except Exception:  # noqa: BLE001 - shutting down anyway
                log.exception("cos3d serve: shutdown step failed")

    app = FastAPI(title="cos3d serve", version=__version__, lifespan=lifespan,
                  description="Open-vocabulary queries on trained cos3d runs (3D Gaussian splats), kept loaded.")
    app.state.executor = executor
    app.state.on_shutdown = []  # callables run when the server stops (the discovery file's removal)
    app.state.pool = pool

    app.add_middleware(Guard, token=token, max_body=max_body)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(*_validation_line(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def _http2(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = "no such route; see /docs" if exc.status_code == 404 else str(exc.detail)
        return _error(exc.status_code, detail)

    async def call(run: str, op: str, body: dict | None, timeout_s: float | None) -> Response:
        limit = timeout if timeout_s is None else max(0.001, min(timeout, float(timeout_s)))
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        fut = loop.run_in_executor(pool, executor.call, run, op, body)
        try:
            out = await asyncio.wait_for(fut, limit)
        except asyncio.TimeoutError:
            return _error(504, f"{op} on run {run!r} took longer than {limit:g} s (--timeout / timeout_s); "
                               "the server keeps serving")
        except ServeError as e:
            return _error(e.status, str(e))
        except Cos3dError as e:
            return _error(400, str(e))
        except (ValueError, TypeError) as e:
            return _error(400, f"bad request: {brief(e)}")
        except Exception as e:  # noqa: BLE001 - a bug answers 500 in one line; the server keeps serving
            log.exception("cos3d serve: %s on %s failed", op, run)
            return _error(500, f"internal error: {brief(e)}")
        ms = f"{(time.perf_counter() - t0) * 1e3:.1f}"
        if isinstance(out, Blob):
            return Response(out.data, media_type=out.media_type, headers={**out.headers, "X-Cos3d-Ms": ms})
        return _json(out, {"X-Cos3d-Ms": ms})

    T = Query(None, description="Deadline in seconds (at most the server's --timeout).")

    @app.get("/health")
    async def health() -> dict:
        return {"ok": True, "version": __version__, "runs": len(executor.catalogue.runs),
                "executor": type(executor).__name__}

    @app.get("/runs")
    async def runs() -> dict:
        return {"runs": executor.status()}

    @app.get("/runs/{run}")
    async def info(run: str, timeout_s: float | None = T) -> Response:
        return await call(run, "info", None, timeout_s)

    @app.post("/runs/{run}/query")
    async def query(run: str, req: QueryRequest, timeout_s: float | None = T) -> Response:
        return await call(run, "query", req.model_dump(exclude_none=True), timeout_s)

    @app.post("/runs/{run}/masks", responses={200: {"content": {"image/png": {}}}})
    async def masks(run: str, req: MasksRequest, timeout_s: float | None = T) -> Response:
        return await call(run, "masks", req.model_dump(exclude_none=True), timeout_s)

    @app.post("/runs/{run}/export", responses={200: {"content": {"application/octet-stream": {}}}})
    async def export(run: str, req: ExportRequest, timeout_s: float | None = T) -> Response:
        return await call(run, "export", req.model_dump(exclude_none=True), timeout_s)

    @app.post("/runs/{run}/pick")
    async def pick(run: str, req: PickRequest, timeout_s: float | None = T) -> Response:
        return await call(run, "pick", req.model_dump(exclude_none=True), timeout_s)

    @app.post("/runs/{run}/place")
    async def place(run: str, req: PlaceRequest, timeout_s: float | None = T) -> Response:
        return await call(run, "place", req.model_dump(exclude_none=True), timeout_s)

    @app.get("/runs/{run}/objects")
    async def objects(run: str, vocabulary: str | None = None, timeout_s: float | None = T) -> Response:
        return await call(run, "objects", {"vocabulary": vocabulary}, timeout_s)

    return app
