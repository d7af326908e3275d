"""The HTTP layer of ``pocketseg serve``: a FastAPI application over a :class:`JobQueue`.

Why FastAPI on uvicorn: both are widely used and actively maintained, typed, and run on any
platform with pip alone; FastAPI gives request validation and an OpenAPI page (``/docs``) for
free, and Starlette's streamed request body lets an upload go straight to disk with its size
counted as it arrives (so no multipart parser is needed: the body is the image file itself).
The interface is described in :mod:`pocketseg_core.remote`, its client.

Security: a token (``Authorization: Bearer ...``, compared in constant time) is required on
every ``/v1`` call whenever a token file is given, and the command refuses to bind beyond
loopback without one. Clients name models from the server's catalog only, never a path.
"""

from __future__ import annotations

import contextlib
import hmac
import json
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from pocketseg_core import __version__
from pocketseg_core.remote import REMOTE_OPTIONS, UPLOAD_EXTENSIONS
from pocketseg_core.server.jobs import JobQueue

#: option name -> its type, checked before a job is queued
OPTION_TYPES: dict[str, type] = {
    "fast": bool,
    "tta": bool,
    "overlap": float,
    "cut_thin_bridges": bool,
    "keep_largest_component": bool,
    "bundle_fill_holes": bool,
    "fill_holes": bool,
}
assert set(OPTION_TYPES) == set(REMOTE_OPTIONS)


def offered_models() -> list[dict[str, Any]]:
    """The catalog the server offers (shipped then the user's), without server paths."""
    from pocketseg_core.bundles import list_bundles, read_config
    from pocketseg_core.errors import BundleError

    offered = []
    for entry in list_bundles():
        try:
            config = read_config(entry.path).to_dict()
        except BundleError:
            continue
        offered.append(
            {
                "name": entry.name,
                "task": entry.task,
                "title": entry.title,
                "modality": entry.modality,
                "version": entry.version,
                "config": config,
            }
        )
    return offered


def model_folder(model: str) -> Path:
    """The bundle folder of a catalog name or task alias; 404 for anything else (paths too)."""
    from pocketseg_core.bundles import resolve_bundle

    offered = offered_models()
    if model not in {m["name"] for m in offered} | {m["task"] for m in offered if m["task"]}:
        names = ", ".join(sorted(m["name"] for m in offered)) or "(none installed)"
        raise HTTPException(404, f"no model '{model}' on this server; it offers: {names}")
    return resolve_bundle(model)


def parse_options(text: str) -> dict[str, Any]:
    try:
        options = json.loads(text or "{}")
    except ValueError:
        raise HTTPException(400, "the options are not valid JSON") from None
    if not isinstance(options, dict):
        raise HTTPException(400, "the options must be a JSON object")
    for name, value in options.items():
        kind = OPTION_TYPES.get(name)
        if kind is None:
            raise HTTPException(400, f"unknown option '{name}'; the server accepts {', '.join(OPTION_TYPES)}")
        if kind is bool and not isinstance(value, bool):
            raise HTTPException(400, f"option '{name}' must be true or false")
        if kind is float and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise HTTPException(400, f"option '{name}' must be a number")
    if not 0.0 <= float(options.get("overlap", 0.5)) < 1.0:
        raise HTTPException(400, "option 'overlap' must be in [0, 1)")
    return options


def create_app(jobs: JobQueue, token: str | None, max_upload_bytes: int) -> FastAPI:
    """The application; ``token`` None means no token is asked for (loopback only)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        jobs.shutdown()

    app = FastAPI(title="PocketSeg server", version=__version__, lifespan=lifespan)
    expected = token.encode("utf-8") if token else None

    def authorize(request: Request) -> None:
        if expected is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode("utf-8"), expected):
            raise HTTPException(
                401,
                "a valid token is required (header 'Authorization: Bearer TOKEN')",
                headers={"WWW-Authenticate": "Bearer"},
            )

    guarded = [Depends(authorize)]

    @app.get("/v1/health", dependencies=guarded)
    def health() -> dict[str, Any]:
        return {
            "pocketseg": __version__,
            "workers": jobs.workers,
            "queued": jobs.queued_count(),
            "running": jobs.running_count(),
            "max_upload_bytes": max_upload_bytes,
        }

    @app.get("/v1/models", dependencies=guarded)
    def models() -> list[dict[str, Any]]:
        return offered_models()

    @app.post("/v1/jobs", dependencies=guarded, status_code=202)
    async def submit(request: Request, model: str, format: str, options: str = "{}") -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload_bytes:
            raise HTTPException(413, _too_large(int(declared), max_upload_bytes))
        try:
            extension = format.lower()
            if extension not in UPLOAD_EXTENSIONS:
                raise HTTPException(
                    400, f"format '{format}' is not accepted; send one of {', '.join(UPLOAD_EXTENSIONS)}"
                )
            parsed = parse_options(options)
            folder = model_folder(model)
            if jobs.is_full():
                raise HTTPException(503, "the server's queue is full; try again in a few minutes")
        except HTTPException:
            # read the upload before answering: a client still sending would otherwise see a
            # broken connection instead of the reason
            received = 0
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_upload_bytes:
                    break
            raise
        job = jobs.new_job(model, folder, extension, parsed)
        try:
            received = 0
            with open(job.input_path, "wb") as stream:
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > max_upload_bytes:
                        raise HTTPException(413, _too_large(received, max_upload_bytes))
                    stream.write(chunk)
            if received == 0:
                raise HTTPException(400, "the upload is empty; send the image file as the request body")
        except BaseException:
            jobs.discard(job)
            raise
        return jobs.enqueue(job)

    @app.get("/v1/jobs/{job_id}", dependencies=guarded)
    def status(job_id: str) -> dict[str, Any]:
        return _known(jobs.describe(job_id))

    @app.delete("/v1/jobs/{job_id}", dependencies=guarded)
    def cancel(job_id: str) -> dict[str, Any]:
        return _known(jobs.cancel(job_id))

    @app.get("/v1/jobs/{job_id}/mask", dependencies=guarded)
    def mask(job_id: str) -> Response:
        found = jobs.mask(job_id)
        if found is None:
            described = _known(jobs.describe(job_id))
            raise HTTPException(409, f"the job has no mask: it is {described['state']}")
        data, extension = found
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="mask{extension}"'},
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # one sentence for the client; the traceback goes to the server's log
        import logging

        logging.getLogger("pocketseg.serve").exception("request %s failed", request.url.path)
        return JSONResponse({"detail": f"the server failed on this request ({type(error).__name__})"}, 500)

    return app


def _known(described: dict[str, Any] | None) -> dict[str, Any]:
    if described is None:
        raise HTTPException(404, "no such job on this server (finished jobs are forgotten after an hour)")
    return described


def _too_large(size: int, limit: int) -> str:
    return (
        f"the upload ({size / 1e6:.1f} MB or more) is larger than this server accepts "
        f"({limit / 1e6:.1f} MB); ask its administrator to raise --max-upload-mb"
    )
