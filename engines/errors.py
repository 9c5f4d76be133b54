"""DanceCam's typed errors: the one place they are defined, for `engines` and `realtime` alike.

Every message is written for the person at the keyboard: what went wrong, and the command or step that fixes it.
Library code raises these and never exits; the CLI returns `exit_code`, the server answers `http_status`.
"""

from __future__ import annotations

from collections.abc import Sequence

from engines.command import dancecam


class DanceCamError(Exception):
    """Base of every error DanceCam raises on purpose."""

    exit_code: int = 1
    http_status: int = 503  # what the server could not do for the request, not a bug: never a 500


class ConfigError(DanceCamError):
    """A setting, flag or environment variable has a value we cannot use."""

    exit_code = 2
    http_status = 422


# --- model files ------------------------------------------------------------------------------------------


class ModelError(DanceCamError):
    """Something about a model file: unknown, missing, or failed verification."""


class UnknownModelError(ModelError):
    """A name that is neither a registry name nor a registered file name."""

    exit_code = 2

    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(
            f"unknown model {name!r}; known models: {', '.join(known)} (see `{dancecam('models', 'list')}`)"
        )
        self.name = name


class ModelMissingError(ModelError):
    """A model file is not where DanceCam looks for it."""


class CheckpointFormatError(ModelError):
    """A weights file is not what the model expects: a missing, extra or misshapen tensor, or an unknown layer."""


# --- inputs -----------------------------------------------------------------------------------------------


class MediaError(DanceCamError):
    """An input or output file that cannot be used: missing, unsupported, corrupt, or unwritable."""

    http_status = 422


class SignallingError(DanceCamError):
    """A WebRTC offer that cannot be answered: malformed or oversized SDP, no video, no codec in common."""

    http_status = 400


class ImageError(DanceCamError):
    """An image that cannot be used: unreadable, not an image, or too large."""

    http_status = 422


class NoFaceError(DanceCamError):
    """No face was found where one is required (a source photo)."""

    http_status = 422


# --- live serving -----------------------------------------------------------------------------------------


class SettingsError(ConfigError):
    """A settings change with an unknown key or a value out of range; nothing was changed."""


class CapacityError(DanceCamError):
    """The server runs as many sessions as it can hold."""


class SessionNotFoundError(DanceCamError):
    """A session (or WHEP viewer) that is not there: it ended, or never was. The message says which when known."""

    http_status = 404


class HostUnavailableError(DanceCamError):
    """A cluster's session host did not answer the front (its node or process died, or it is unreachable)."""


class EngineStartError(DanceCamError):
    """A session's swap engine could not be made ready (out of device memory, a failed capture or engine load)."""


class NotReadyError(DanceCamError):
    """The server cannot start a swapping session yet (one of the two reasons below)."""


class WeightsNotReadyError(NotReadyError):
    """The model weights are missing: the server must be restarted with them (the server's state, 503)."""

    http_status = 503


class NoSourceError(NotReadyError):
    """No source photo yet: the client must upload one first (a conflict with the server's state, 409)."""

    http_status = 409


# --- downloads --------------------------------------------------------------------------------------------


class DownloadError(ModelError):
    """A download failed. `url` is the address that failed; `also_tried` lists the other sources' failures."""

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.also_tried: list[DownloadError] = []

    def with_alternatives(self, others: Sequence[DownloadError]) -> DownloadError:
        """The same error, its message extended by what every other source answered."""
        self.also_tried = list(others)
        if others:
            lines = "\n".join(f"  - {e.url}: {e.args[0].splitlines()[0]}" for e in others)
            self.args = (f"{self.args[0]}\nOther sources tried:\n{lines}",)
        return self


class ChecksumMismatchError(DownloadError):
    """A fetched file's sha256 differs from the published or recorded one; what was fetched is deleted."""

    def __init__(self, file_name: str, expected: str, actual: str, action: str, url: str | None = None) -> None:
        super().__init__(f"{file_name}: sha256 mismatch: expected {expected}, got {actual}. {action}".rstrip(), url)
        self.file_name = file_name
        self.expected = expected
        self.actual = actual


class NetworkError(DownloadError):
    """The server could not be reached at all (no network, DNS failure, refused, timed out)."""


class AccessDeniedError(DownloadError):
    """HTTP 401 or 403 from a server that is not known to gate the file."""


class GatedModelError(AccessDeniedError):
    """HTTP 401 or 403 from a gated source: the user must request access and set HF_TOKEN."""


class RemoteFileNotFoundError(DownloadError):
    """HTTP 404: the file is not (or no longer) at that address."""


class HTTPStatusError(DownloadError):
    """Any other HTTP error status after retries."""


class TruncatedDownloadError(DownloadError):
    """The transfer ended before the announced length, again and again; the partial file is kept for resume."""


class DiskFullError(DownloadError):
    """No room left for the file (or the process's file size limit was reached)."""
