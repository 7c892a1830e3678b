"""The Twins API: make a twin from an uploaded video, follow and cancel its training, and put it live.

``POST /api/twins`` takes a multipart form (the video streamed to disk under ``serve.max_upload_bytes``, its
headers checked before it is accepted) and queues a job (``stream.jobs``); ``GET``/``DELETE /api/jobs/{id}``
follow and cancel it; ``GET /api/twins`` lists the twins on disk (``serve.twins_dir``) and those the server
runs; ``POST /api/twins/{name}/live`` loads a finished twin into the running server if it is not loaded yet (off
the event loop) and switches a session to it, its viewers staying connected (``stream.twins``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web

from stream.http_common import RUNTIME, optional_str, read_optional_json
from stream.jobs import CREATE_STATE, JOB_FILE, SIZES, JobManager
from stream.openapi import SESSION, Route, obj
from stream.runtime import SESSION_ID
from stream.twins import load_twin, twin_dir_paths
from twincast.errors import InputError, LimitError, NotFoundError, UnprocessableError

JOBS: web.AppKey[JobManager] = web.AppKey("jobs", JobManager)
LOADING: web.AppKey[dict[str, asyncio.Lock]] = web.AppKey("twin_loading", dict)
NAME = SESSION_ID.pattern  # a twin is named like a session: it may become one
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
FILES = {"contact_sheet.png": "image/png", "preview.png": "image/png", "eval.mp4": "video/mp4"}
FIELD_BYTES = 200  # a form field other than the video
CHUNK_BYTES = 1 << 20
MIN_BUDGET_S, MAX_BUDGET_S = 10.0, 86_400.0
UPLOADS = ".uploads"  # inside twins_dir: uploads being received


def setup(app: web.Application) -> None:
    """Give ``app`` its job manager (started and stopped with the app) and the twins' load locks."""
    runtime = app[RUNTIME]
    config = runtime.config
    manager = JobManager(config.twins_dir, preview_every_s=config.twin_preview_every_s, threads=config.train_threads,
                         notify=lambda message, level: runtime.events.emit("twin", message, level=level))
    app[JOBS] = manager
    app[LOADING] = {}

    async def start(app: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, remove_uploads, config.twins_dir)
        await manager.start()

    async def stop(app: web.Application) -> None:
        await manager.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)


# --- upload -------------------------------------------------------------------------------------------------------

async def create_twin(request: web.Request) -> web.Response:
    """Queue a twin made from the uploaded video: form fields ``video`` (the file), ``name``, ``size``, ``budget``."""
    runtime = request.app[RUNTIME]
    twins_dir = runtime.config.twins_dir
    if request.content_type != "multipart/form-data":
        raise InputError(f"expected Content-Type multipart/form-data (a form with the video), got "
                         f"{request.content_type or 'none'}")
    limit = runtime.config.max_upload_bytes
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        raise _too_big(request.content_length, limit)
    upload = twins_dir / UPLOADS / uuid.uuid4().hex
    try:
        fields, video_name = await _read_form(request, upload, limit)
        name, size, budget_s = _check_fields(fields)
        if video_name is None:
            raise InputError('the form has no "video" file; expected the footage of the person speaking')
        directory = twins_dir / name
        if name in runtime.twins or directory.exists():
            raise InputError(f"a twin named {name!r} exists already; choose another name")
        await asyncio.get_running_loop().run_in_executor(None, _check_video, upload, video_name)
        directory.mkdir(parents=True)
        video = f"source{_suffix(video_name)}"
        os.replace(upload, directory / video)
    finally:
        upload.unlink(missing_ok=True)
    job = request.app[JOBS].submit(name, directory, video, size, budget_s)
    return web.json_response({"job": job.describe()}, status=202, headers={"Location": f"/api/jobs/{job.job_id}"})


async def _read_form(request: web.Request, upload: Path, limit: int) -> tuple[dict[str, str], str | None]:
    """The form's short fields, and the video streamed into ``upload`` (its file name, or None without one).

    Raises:
        InputError: not a readable multipart form, an unknown or repeated field, or a field too long.
        LimitError: the video is over ``limit`` bytes (413).
    """
    fields: dict[str, str] = {}
    video_name: str | None = None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, MultipartReader) or not isinstance(part, BodyPartReader):
                raise InputError("the form holds a nested multipart part; expected plain fields and one file")
            field = part.name or ""
            if field in fields or (field == "video" and video_name is not None):
                raise InputError(f"the form has the field {field!r} twice")
            if field == "video":
                video_name = part.filename or "video.mp4"
                await _save_part(part, upload, limit)
            elif field in ("name", "size", "budget"):
                fields[field] = await _read_field(part, field)
            else:
                raise InputError(f"the form has an unknown field {field[:40]!r}; expected video, name, size, budget")
    except (ValueError, AssertionError, LookupError, UnicodeDecodeError) as exc:  # aiohttp's reader on bad bodies
        raise InputError(f"the request body is not a readable multipart form: {exc or type(exc).__name__}") from exc
    return fields, video_name


async def _read_field(part: BodyPartReader, field: str) -> str:
    """A short text field, refused once it passes ``FIELD_BYTES``."""
    raw = b""
    while chunk := await part.read_chunk(FIELD_BYTES + 1):
        raw += chunk
        if len(raw) > FIELD_BYTES:
            raise InputError(f"the form field {field!r} is over {FIELD_BYTES} bytes")
    return raw.decode("utf-8")


async def _save_part(part: BodyPartReader, upload: Path, limit: int) -> None:
    """Stream the file part to ``upload``, chunk by chunk, refusing it once it passes ``limit`` bytes."""
    upload.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    loop = asyncio.get_running_loop()
    with upload.open("wb") as handle:
        while chunk := await part.read_chunk(CHUNK_BYTES):
            written += len(chunk)
            if written > limit:
                raise _too_big(written, limit)
            await loop.run_in_executor(None, handle.write, chunk)
    if written == 0:
        raise InputError('the "video" file is empty (0 bytes); expected the footage of the person speaking')


def _too_big(size: int, limit: int) -> LimitError:
    return LimitError(f"the upload of {size} bytes or more is over the {limit}-byte limit (max_upload_bytes)",
                      limit="max_upload_bytes", value=limit, http_status=413)


def _check_fields(fields: dict[str, str]) -> tuple[str, str, float]:
    """The form's name, size and budget, checked.

    Raises:
        InputError: naming the field, what came and what was expected.
    """
    from model.schedule import parse_duration

    name = fields.get("name", "")
    if not re.match(NAME, name):
        raise InputError(f"name {name[:60]!r} must be 1-40 letters, digits, '-' or '_'")
    size = fields.get("size", "demo")
    if size not in SIZES:
        raise InputError(f"size {size[:40]!r} must be one of {', '.join(SIZES)}")
    budget_s = parse_duration(fields.get("budget", "15m"))
    if not MIN_BUDGET_S <= budget_s <= MAX_BUDGET_S:
        raise InputError(f"budget {fields.get('budget')!r} must be between {MIN_BUDGET_S:g} s and 24 h")
    return name, size, budget_s


def _check_video(path: Path, name: str) -> None:
    """Refuse a file whose headers say enrollment would refuse it (not a video, no audio, too short)."""
    from avatar.preflight import check_headers

    try:
        check_headers(path)
    except (InputError, UnprocessableError, NotFoundError) as exc:
        raise UnprocessableError(str(exc).replace(str(path), name).replace(path.name, name)) from exc


def _suffix(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    return suffix if suffix in VIDEO_SUFFIXES else ".video"


# --- jobs ---------------------------------------------------------------------------------------------------------

async def list_jobs(request: web.Request) -> web.Response:
    """Every job, newest first."""
    return web.json_response({"jobs": [job.describe() for job in request.app[JOBS].listed()]})


async def get_job(request: web.Request) -> web.Response:
    """A job: its state, stage, progress (0-1), ETA, loss, messages, preview and result."""
    return web.json_response(request.app[JOBS].get(request.match_info["job_id"]).describe())


async def cancel_job(request: web.Request) -> web.Response:
    """Cancel a queued or running job (its twin directory is removed); an ended job is left as it is."""
    job = await request.app[JOBS].cancel(request.match_info["job_id"])
    return web.json_response(job.describe())


# --- twins --------------------------------------------------------------------------------------------------------

async def list_twins(request: web.Request) -> web.Response:
    """The twins on disk (made here or by ``twincast create``) and those the server runs, with their state."""
    runtime = request.app[RUNTIME]
    twins_dir = runtime.config.twins_dir
    listed = []
    if twins_dir.is_dir():
        for directory in sorted(twins_dir.iterdir()):
            if (directory / JOB_FILE).is_file() or (directory / CREATE_STATE).is_file():
                listed.append(_summary(request, directory))
    on_disk = {twin["name"] for twin in listed}
    for name in sorted(runtime.twins):
        if name not in on_disk:
            listed.append({"name": name, "state": "loaded", "source": "serve", **_live_state(request, name)})
    return web.json_response({"twins": listed, "twins_dir": str(twins_dir.resolve())})


async def get_twin(request: web.Request) -> web.Response:
    """One twin: its state, its job, the plan and stages, the enrollment report, the eval."""
    name = _name(request)
    directory = request.app[RUNTIME].config.twins_dir / name
    if not directory.is_dir():
        if name in request.app[RUNTIME].twins:
            return web.json_response({"name": name, "state": "loaded", "source": "serve",
                                      **_live_state(request, name)})
        raise NotFoundError(f"no twin {name!r}")
    detail = _summary(request, directory)
    detail["create"] = _read_json(directory / CREATE_STATE)
    detail["report"] = _read_json(directory / "pack" / "report.json")
    detail["eval"] = _read_json(directory / "eval.json")
    return web.json_response(detail)


async def twin_file(request: web.Request) -> web.StreamResponse:
    """A twin's contact sheet, latest training preview or side-by-side eval video."""
    name = _name(request)
    file = request.match_info["file"]
    path = request.app[RUNTIME].config.twins_dir / name / file
    if file not in FILES or not path.is_file():
        raise NotFoundError(f"twin {name!r} has no {file} (yet)")
    return web.FileResponse(path, headers={"Content-Type": FILES[file], "Cache-Control": "no-cache"})


async def go_live(request: web.Request) -> web.Response:
    """Put a twin live: load it if the server has not yet (a finished twin of ``serve.twins_dir``), then switch a
    session to it (``session``: an existing one; a new id starts a session; none: the default session)."""
    runtime = request.app[RUNTIME]
    name = _name(request)
    body = await read_optional_json(request)
    session_id = optional_str(body, "session")
    loaded = await _ensure_loaded(request, name)
    previous = None
    if session_id is not None and session_id not in runtime.channels:
        session = runtime.add_session(session_id, name)
        created = True
    elif session_id is None and runtime.default_session_id is None:
        session = runtime.add_session(name, name)
        created = True
    else:
        previous = runtime.session(session_id).twin.name
        session = runtime.switch_twin(session_id, name)
        created = False
    return web.json_response({"session": session.session_id, "twin": name, "loaded": loaded, "created": created,
                              "previous": previous})


async def _ensure_loaded(request: web.Request, name: str) -> bool:
    """Load twin ``name`` from ``serve.twins_dir`` unless the server runs it already; True if it was loaded now."""
    runtime = request.app[RUNTIME]
    lock = request.app[LOADING].setdefault(name, asyncio.Lock())
    async with lock:
        if name in runtime.twins:
            return False
        directory = runtime.config.twins_dir / name
        if not directory.is_dir():
            raise NotFoundError(f"no twin {name!r}; twins: {sorted(runtime.twins)}")
        state = _read_json(directory / CREATE_STATE) or {}
        if state.get("state") != "done":
            training = state.get("state") or "not started"
            raise UnprocessableError(f"twin {name!r} is not ready yet (its training is {training}); put it live once "
                                     "its job is done")
        pack, model = twin_dir_paths(directory)
        loaded = await asyncio.get_running_loop().run_in_executor(None, load_twin, name, pack, model, runtime.config,
                                                                  dict(runtime.engines))
        runtime.add_twin(loaded)
        return True


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not re.match(NAME, name):
        raise InputError(f"twin name {name[:60]!r} must be 1-40 letters, digits, '-' or '_'")
    return name


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _live_state(request: web.Request, name: str) -> dict[str, Any]:
    runtime = request.app[RUNTIME]
    return {"loaded": name in runtime.twins,
            "sessions": [key for key, channel in runtime.channels.items() if channel.session.twin.name == name]}


def _summary(request: web.Request, directory: Path) -> dict[str, Any]:
    """A twin directory as the list shows it."""
    name = directory.name
    job = request.app[JOBS].by_name(name)
    create = _read_json(directory / CREATE_STATE) or {}
    created = create.get("state")
    if job is not None and job.state != "done":
        state = job.state
    elif created == "done" and (directory / "twin.onnx").is_file():
        state = "ready"
    else:
        state = created or "unknown"
    live = create.get("stages", {}).get("eval", {}).get("live")
    files = {file: f"/api/twins/{name}/files/{file}" for file in FILES if (directory / file).is_file()}
    return {"name": name, "state": state, "size": create.get("size") or (job.size if job else None),
            "budget_s": create.get("budget_s") or (job.budget_s if job else None),
            "job": job.describe() if job is not None else None, "live": live, "files": files,
            "source": "twins_dir", **_live_state(request, name)}


def remove_uploads(twins_dir: Path) -> None:
    """Forget uploads a stopped server was receiving."""
    shutil.rmtree(twins_dir / UPLOADS, ignore_errors=True)


UPLOAD_FORM = {"type": "object", "required": ["video", "name"], "additionalProperties": False, "properties": {
    "video": {"type": "string", "format": "binary", "description": "the footage: mp4, mov, mkv, webm or avi with "
                                                                   "sound, up to serve.max_upload_bytes"},
    "name": {"type": "string", "pattern": NAME},
    "size": {"enum": list(SIZES), "description": "demo (default: live on a CPU), base (GPU); tiny: for tests"},
    "budget": {"type": "string", "description": "wall time for all of it, e.g. 15m (default), 90s, 1h30m"}}}
TWIN_NAME = "{name}"  # checked by the handlers (``_name``): aiohttp's patterns cannot hold a {count}
TWIN_ROUTES: list[Route] = [
    Route("POST", "/api/twins", create_twin, "Make a twin from a video: a multipart form (video, name, size, budget) "
          "→ a queued job", body={"content": "multipart/form-data", "schema": UPLOAD_FORM},
          responses={"202": "queued: {job}"}, errors=(422,)),
    Route("GET", "/api/twins", list_twins, "The twins: on disk (made here or by twincast create) and loaded"),
    Route("GET", f"/api/twins/{TWIN_NAME}", get_twin, "A twin: state, job, plan, enrollment report, eval"),
    Route("GET", f"/api/twins/{TWIN_NAME}/files/{{file:contact_sheet.png|preview.png|eval.mp4}}", twin_file,
          "A twin's contact sheet, latest training preview, or side-by-side eval video",
          responses={"200": "the file"}),
    Route("POST", f"/api/twins/{TWIN_NAME}/live", go_live, "Put a twin live: load it (hot) and switch a session to it "
          "(viewers stay connected); a new session id starts a session", body=obj(session=SESSION),
          body_required=False, errors=(422, 503)),
    Route("GET", "/api/jobs", list_jobs, "Training jobs, newest first"),
    Route("GET", "/api/jobs/{job_id}", get_job, "A job: state, stage, progress 0-1, ETA, loss, messages, preview"),
    Route("DELETE", "/api/jobs/{job_id}", cancel_job, "Cancel a job (its twin directory is removed)"),
]
