"""One upload attempt, with mlflow's own HTTP retries off for this call only.

``MlflowClient.log_artifact`` makes two HTTP requests to a tracking server: ``runs/get``
(to learn the run's artifact URI) and the artifact ``PUT``. mlflow retries each of them
itself (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, 7 by default, with backoff), which would
multiply our own retry policy (``_retry``). mlflow reads that setting from the
environment only when a call does not pass ``max_retries``; changing the environment
would change every thread of the process. So for HTTP servers both requests are made
here through mlflow's own ``http_request`` with ``max_retries=0``, exactly as
``RestStore.get_run`` and ``HttpArtifactRepository.log_artifact`` make them otherwise
(same host credentials, headers and error checks).

Everything else goes through mlflow unchanged: tracking stores that are not an HTTP
server (sqlite and files make no request; ``databricks`` keeps mlflow's retries), run
artifacts stored directly in a cloud bucket (the cloud SDK's own policy), and multipart
uploads of files of ``MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE`` and more to a server
that has them on (mlflow retries each part). See docs/uploads.md, "Retries".
"""

from __future__ import annotations

import inspect
import mimetypes
import os
import posixpath
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from .._extras import require
from ..errors import UploadError

_HTTP = ("http", "https")
_RUNS_GET = "/api/2.0/mlflow/runs/get"


def _mlflow(module: str = "mlflow") -> Any:
    """An mlflow module, imported on first use (typed Any: mlflow's helpers are untyped)."""
    return require(module, "uploading artifacts")


def tracking_uri_or_default(tracking_uri: str | None) -> str:
    """``tracking_uri``, else the one mlflow itself would use now."""
    return tracking_uri or str(_mlflow().get_tracking_uri())


def run_artifact_uri(tracking_uri: str, run_id: str) -> str:
    """The run's artifact URI, from a tracking server, without mlflow's retries."""
    rest = _mlflow("mlflow.utils.rest_utils")
    creds = _mlflow("mlflow.utils.credentials").get_default_host_creds(tracking_uri)
    response = rest.http_request(
        creds,
        _RUNS_GET,
        "GET",
        max_retries=0,
        params={"run_id": run_id, "run_uuid": run_id},
    )
    rest.verify_rest_response(response, _RUNS_GET)
    try:
        return str(response.json()["run"]["info"]["artifact_uri"])
    except (ValueError, KeyError, TypeError):
        raise UploadError(
            f"pytest-ckpts: {tracking_uri}{_RUNS_GET} answered without the artifact URI "
            f"of run {run_id}; is {tracking_uri} an MLflow tracking server?"
        ) from None


def _http_base(artifact_uri: str, tracking_uri: str) -> str | None:
    """The HTTP URL a proxied or HTTP artifact URI stands for; None for any other scheme."""
    scheme = urlparse(artifact_uri).scheme
    if scheme in _HTTP:
        return artifact_uri
    if scheme == "mlflow-artifacts":
        repo = _mlflow("mlflow.store.artifact.mlflow_artifacts_repo")
        return str(repo.MlflowArtifactsRepository.resolve_uri(artifact_uri, tracking_uri))
    return None


def _repository(artifact_uri: str, tracking_uri: str) -> Any:
    get_artifact_repository = _mlflow(
        "mlflow.store.artifact.artifact_repository_registry"
    ).get_artifact_repository
    if "tracking_uri" in inspect.signature(get_artifact_repository).parameters:
        return get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)
    return get_artifact_repository(artifact_uri)  # older mlflow: the URI only


def _multipart(artifact_uri: str, tracking_uri: str, local: Path) -> Any:
    """mlflow's repository when it would upload ``local`` in parts, else None.

    mlflow never uses parts below ``MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE`` (500 MB
    by default); above it, the server decides, and only mlflow knows how to ask.
    """
    minimum = _mlflow("mlflow.environment_variables").MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE
    if local.stat().st_size < minimum.get():
        return None
    repo = _repository(artifact_uri, tracking_uri)
    should = getattr(repo, "_should_multipart_upload", None)
    return repo if callable(should) and should(str(local)) else None


def _put(base: str, local: Path, directory: str | None) -> None:
    """The artifact PUT of ``HttpArtifactRepository.log_artifact``, with ``max_retries=0``."""
    rest = _mlflow("mlflow.utils.rest_utils")
    creds = _mlflow("mlflow.utils.credentials").get_default_host_creds(base)
    parts = (directory, local.name) if directory else (local.name,)
    endpoint = posixpath.join("/", *parts)
    # the Content-Type mlflow itself would send (the UI shows text artifacts by it)
    guess = getattr(_mlflow("mlflow.utils.mime_type_utils"), "_guess_mime_type", None)
    mime = guess(local.name) if callable(guess) else mimetypes.guess_type(local.name)[0]
    with open(local, "rb") as body:
        response = rest.http_request(
            creds,
            endpoint,
            "PUT",
            max_retries=0,
            data=body,
            extra_headers={"Content-Type": mime or "application/octet-stream"},
        )
    rest.augmented_raise_for_status(response)


class RunArtifacts:
    """Where one run's artifacts go; :meth:`log_artifact` is one attempt, never retried.

    The artifact URI is looked up on the first attempt that gets it and kept for the
    next attempts of the same upload.
    """

    def __init__(self, tracking_uri: str | None, run_id: str) -> None:
        self.tracking_uri = tracking_uri_or_default(tracking_uri)
        self.run_id = run_id
        self._artifact_uri: str | None = None

    def log_artifact(self, local: Path, directory: PurePosixPath) -> None:
        """Upload ``local`` into ``directory`` of the run (``.`` is the top)."""
        dest = None if str(directory) in ("", ".") else str(directory)
        if urlparse(self.tracking_uri).scheme not in _HTTP:  # a local store: no HTTP to retry
            client = _mlflow("mlflow.tracking").MlflowClient(self.tracking_uri)
            client.log_artifact(self.run_id, os.fspath(local), artifact_path=dest)
            return
        if self._artifact_uri is None:
            self._artifact_uri = run_artifact_uri(self.tracking_uri, self.run_id)
        artifact_uri = self._artifact_uri
        base = _http_base(artifact_uri, self.tracking_uri)
        if base is not None and _multipart(artifact_uri, self.tracking_uri, local) is None:
            _put(base, local, dest)
            return
        repo = _repository(artifact_uri, self.tracking_uri)
        repo.log_artifact(os.fspath(local), dest)
