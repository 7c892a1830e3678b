"""The exceptions twincast reports to people: each message names what was wrong and what was expected.

The CLI prints them and exits non-zero; the HTTP layer maps ``http_status`` to the response code with a JSON
body. Anything that is not a ``TwincastError`` is a bug and is reported as one.
"""


class TwincastError(Exception):
    """Base class: an error whose message is meant for the user."""

    http_status = 400


class InputError(TwincastError):
    """A file, argument or request body is not what was expected."""

    http_status = 400


class UnprocessableError(TwincastError):
    """The input is well formed but cannot be used (a video with no face, an empty text)."""

    http_status = 422


class NotFoundError(TwincastError):
    """A named file, run, session or resource does not exist."""

    http_status = 404


class PayloadTooLargeError(TwincastError):
    """A request body or queued input is over its limit."""

    http_status = 413


class UnauthorizedError(TwincastError):
    """An operator endpoint was called without the right bearer token."""

    http_status = 401


class ArtifactMismatchError(TwincastError):
    """A model artifact does not match its sidecar, or an input does not match the artifact."""

    http_status = 422


class DependencyError(TwincastError):
    """A required program or library (espeak-ng, TensorRT, CUDA) is missing on this machine."""

    http_status = 503


class ToolError(TwincastError):
    """A program twincast runs (espeak-ng) is there but failed at its job: the fault is on the server's side."""

    http_status = 502


class QueueFullError(TwincastError):
    """A bounded queue refused more work; the caller should retry later or interrupt first."""

    http_status = 429


class LimitError(TwincastError):
    """A configured limit was reached: ``limit`` names the setting, ``value`` is its value.

    The status says which kind: 413 (a body over its size), 429 (this client asks too often, or is locked out
    after failed tokens) or 503 (the server is at capacity). ``retry_after_s``, when known, is how long to wait.
    """

    def __init__(self, message: str, *, limit: str, value: float, http_status: int,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.limit = limit
        self.value = value
        self.http_status = http_status
        self.retry_after_s = retry_after_s
