"""Client of a PocketSeg server (``pocketseg serve``): segment on another machine's GPU.

Python's standard library only (``urllib``, ``json``): the Slicer module uses it without any
extra package, and without torch. The server's HTTP interface (all under ``/v1``; every call
carries ``Authorization: Bearer TOKEN`` when the server has a token)::

    GET    /v1/health              -> {"pocketseg", "workers", "queued", "running", "max_upload_bytes"}
    GET    /v1/models              -> [{"name", "task", "title", "modality", "version", "config"}]
    POST   /v1/jobs?model=M&format=.nrrd&options={JSON}   body: the image file's bytes
                                   -> 202 {"id", "state", ...}
    GET    /v1/jobs/ID             -> {"id", "state", "fraction", "message", "error", "error_kind", ...}
    GET    /v1/jobs/ID/mask        -> the mask file's bytes, in the format of the upload
    DELETE /v1/jobs/ID             -> cancels a queued or running job, forgets a finished one

A job's ``state`` is ``queued``, ``running``, ``succeeded``, ``failed`` or ``cancelled``. Every
problem reaches the caller as a :class:`~pocketseg_core.errors.PocketSegError` subclass with one
sentence: :class:`ServerUnreachable` (no answer, or the connection broke), :class:`ServerAuthError`
(401), :class:`ServerError` (the server refused the request), or the job's own error (for
example ``InputImageError``), rebuilt by name.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketseg_core import errors
from pocketseg_core.errors import Cancelled, PocketSegError

#: the file endings a server accepts as uploads (single-file formats: the bytes are the image)
UPLOAD_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha")
#: inference options a client may set (the device is the server's choice)
REMOTE_OPTIONS: tuple[str, ...] = (
    "fast",
    "tta",
    "overlap",
    "cut_thin_bridges",
    "keep_largest_component",
    "bundle_fill_holes",
    "fill_holes",
)
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED_STATES = (SUCCEEDED, FAILED, CANCELLED)
#: seconds a status call or a small request may take before the server counts as unreachable
REQUEST_TIMEOUT_S = 30.0
#: bytes read or sent at a time
CHUNK_BYTES = 1 << 20

ProgressCallback = Callable[[float, str], bool]


class ServerError(PocketSegError):
    """A PocketSeg server refused a request or could not run a job."""


class ServerUnreachable(ServerError):
    """The server did not answer, or the connection broke during a request."""


class ServerAuthError(ServerError):
    """The server refused the token (missing or wrong)."""


@dataclass(frozen=True)
class JobStatus:
    """One look at a server job: state, fraction done in [0, 1], the last message, the error."""

    id: str
    state: str
    fraction: float
    message: str
    error: str = ""
    error_kind: str = ""
    device: str = ""
    seconds: float = 0.0
    messages: tuple[str, ...] = ()
    mask_format: str = ""

    @property
    def done(self) -> bool:
        return self.state in FINISHED_STATES

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobStatus:
        return cls(
            id=str(data.get("id", "")),
            state=str(data.get("state", "")),
            fraction=float(data.get("fraction", 0.0)),
            message=str(data.get("message", "")),
            error=str(data.get("error", "") or ""),
            error_kind=str(data.get("error_kind", "") or ""),
            device=str(data.get("device", "") or ""),
            seconds=float(data.get("seconds", 0.0) or 0.0),
            messages=tuple(str(m) for m in data.get("messages", []) or []),
            mask_format=str(data.get("format", "") or ""),
        )

    def error_instance(self) -> PocketSegError:
        """The exception this failed or cancelled job stands for (its class rebuilt by name)."""
        if self.state == CANCELLED:
            return Cancelled(self.error or "the job was cancelled on the server; nothing was changed")
        error_class = getattr(errors, self.error_kind, None)
        message = self.error or "the server could not run the job"
        if isinstance(error_class, type) and issubclass(error_class, PocketSegError):
            return error_class(message)
        return ServerError(f"the server could not run the job: {message}")


def upload_extension(path: str | os.PathLike) -> str:
    """The ending of ``path`` among :data:`UPLOAD_EXTENSIONS` (lower case), or ``""``."""
    name = Path(path).name.lower()
    return next((ext for ext in UPLOAD_EXTENSIONS if name.endswith(ext)), "")


def read_token_file(path: str | os.PathLike) -> str:
    """The token in a file (surrounding white space removed); a clear error when unusable."""
    target = Path(path).expanduser()
    try:
        token = target.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise PocketSegError(f"{target}: cannot read the token file ({error}); check the path") from None
    if not token:
        raise PocketSegError(f"{target}: the token file is empty; put the server's token in it")
    return token


class RemoteClient:
    """Talks to one PocketSeg server. ``url`` like ``http://gpu-box:8765``; ``token`` or None."""

    def __init__(self, url: str, token: str | None = None, timeout: float = REQUEST_TIMEOUT_S) -> None:
        parsed = urllib.parse.urlsplit(url.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise PocketSegError(
                f"'{url}' is not a server address: give it as http://HOST:PORT (e.g. http://gpu-box:8765)"
            )
        self.url = f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"
        self.token = token or None
        self.timeout = float(timeout)

    # --- requests ------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One HTTP request; returns the open response (caller reads it). Maps every failure."""
        address = self.url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        request = urllib.request.Request(address, data=body, method=method, headers=dict(headers or {}))
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            return urllib.request.urlopen(request, timeout=timeout or self.timeout)  # noqa: S310 (http/https only)
        except urllib.error.HTTPError as error:
            raise self._http_error(error) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ServerUnreachable(
                f"the PocketSeg server at {self.url} did not answer ({reason}); check that it runs and "
                "that the address is right, then try again"
            ) from None

    def _http_error(self, error: urllib.error.HTTPError) -> ServerError:
        try:
            detail = json.loads(error.read().decode("utf-8")).get("detail", "")
        except (ValueError, OSError, AttributeError):
            detail = ""
        detail = str(detail) if detail else (error.reason or f"HTTP {error.code}")
        if error.code == 401:
            return ServerAuthError(
                f"the PocketSeg server at {self.url} refused the token ({detail}); use the token of its "
                "--token-file"
            )
        return ServerError(f"the PocketSeg server at {self.url} refused the request: {detail}")

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            with response:
                return json.loads(response.read().decode("utf-8"))
        except (OSError, ValueError) as error:
            raise ServerUnreachable(
                f"the answer of the PocketSeg server at {self.url} broke off ({error}); try again"
            ) from None

    # --- the interface ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The server's version, workers, queue length and upload limit (checks the token too)."""
        return dict(self._json("GET", "/v1/health"))

    def models(self) -> list[dict[str, Any]]:
        """The models the server offers: name, task, title, modality, version and bundle config."""
        return list(self._json("GET", "/v1/models"))

    def model_info(self, model: str) -> dict[str, Any]:
        """The server's entry for a model name or task alias (names first, as the catalog does)."""
        offered = self.models()
        for entry in offered:
            if entry.get("name") == model:
                return entry
        for entry in offered:
            if entry.get("task") == model:
                return entry
        names = ", ".join(sorted(str(e.get("name")) for e in offered)) or "(none)"
        raise ServerError(f"the PocketSeg server at {self.url} has no model '{model}'; it offers: {names}")

    def submit(self, image_path: str | os.PathLike, model: str, options: dict[str, Any] | None = None) -> str:
        """Upload an image file (NRRD, NIfTI or MHA) to segment with ``model``; returns the job id.

        ``options``: any of :data:`REMOTE_OPTIONS`. The file goes as it is, so the server reads the
        very header the caller has (geometry preserved exactly).
        """
        path = Path(image_path)
        extension = upload_extension(path)
        if not extension:
            raise PocketSegError(
                f"{path}: a server takes {', '.join(UPLOAD_EXTENSIONS)} files; convert the image first"
            )
        unknown = sorted(set(options or {}) - set(REMOTE_OPTIONS))
        if unknown:
            raise PocketSegError(
                f"options {', '.join(unknown)} cannot be sent to a server; it accepts {', '.join(REMOTE_OPTIONS)}"
            )
        try:
            size = path.stat().st_size
        except OSError as error:
            raise errors.InputImageError(f"{path}: cannot be read ({error.strerror or error})") from None
        limit = int(self.health().get("max_upload_bytes", 0) or 0)
        if limit and size > limit:
            raise ServerError(
                f"{path.name} is {size / 1e6:.1f} MB but the PocketSeg server at {self.url} accepts at most "
                f"{limit / 1e6:.1f} MB; ask its administrator to raise --max-upload-mb"
            )
        query = {"model": model, "format": extension, "options": json.dumps(dict(options or {}))}
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        with open(path, "rb") as stream:
            answer = self._json("POST", "/v1/jobs", query=query, body=stream, headers=headers)
        return str(answer["id"])

    def status(self, job_id: str) -> JobStatus:
        """The job's state, fraction done, message and error."""
        return JobStatus.from_dict(self._json("GET", f"/v1/jobs/{urllib.parse.quote(job_id)}"))

    def progress(self, job_id: str) -> tuple[float, str]:
        """``(fraction done in [0, 1], message)`` of the job."""
        status = self.status(job_id)
        return status.fraction, status.message

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a queued or running job (the server kills its process); forget a finished one."""
        return JobStatus.from_dict(self._json("DELETE", f"/v1/jobs/{urllib.parse.quote(job_id)}"))

    def fetch_mask(self, job_id: str, path: str | os.PathLike) -> Path:
        """Download a finished job's mask into ``path`` (written whole or not at all).

        The mask comes in the upload's format (the ending of ``path`` should match it).
        """
        target = Path(path)
        response = self._request("GET", f"/v1/jobs/{urllib.parse.quote(job_id)}/mask")
        partial = target.with_name(f".{target.name}.part")
        try:
            with response, open(partial, "wb") as stream:
                while chunk := response.read(CHUNK_BYTES):
                    stream.write(chunk)
            os.replace(partial, target)
        except OSError as error:
            partial.unlink(missing_ok=True)
            if isinstance(error, (ConnectionError, socket.timeout, TimeoutError)):
                raise ServerUnreachable(
                    f"the download of the mask from {self.url} broke off ({error}); try again"
                ) from None
            raise errors.ImageWriteError(
                f"{target}: cannot write the mask ({error.strerror or error})"
            ) from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return target

    def wait(
        self, job_id: str, progress: ProgressCallback | None = None, interval: float = 0.25
    ) -> JobStatus:
        """Poll until the job ends; ``progress(fraction, message)`` returning False cancels it.

        Returns the succeeded status; raises the job's error, ``Cancelled`` or ``ServerUnreachable``.
        """
        while True:
            status = self.status(job_id)
            if status.done:
                if status.state != SUCCEEDED:
                    raise status.error_instance()
                if progress is not None:
                    progress(1.0, "done")
                return status
            if progress is not None and progress(status.fraction, status.message) is False:
                self.cancel(job_id)
                raise Cancelled("cancelled by the user; the server job was stopped and nothing was written")
            time.sleep(interval)

    def segment_file(
        self,
        image_path: str | os.PathLike,
        mask_path: str | os.PathLike,
        model: str,
        options: dict[str, Any] | None = None,
        progress: ProgressCallback | None = None,
    ) -> JobStatus:
        """Submit, wait, download: the mask of ``image_path`` lands in ``mask_path`` (same format)."""
        job_id = self.submit(image_path, model, options)
        try:
            status = self.wait(job_id, progress)
        except ServerUnreachable:
            raise
        except BaseException:
            _forget(self, job_id)
            raise
        self.fetch_mask(job_id, mask_path)
        _forget(self, job_id)
        return status


def _forget(client: RemoteClient, job_id: str) -> None:
    """Ask the server to drop a job (best effort: the server also forgets old jobs by itself)."""
    try:
        client.cancel(job_id)
    except ServerError:
        pass
