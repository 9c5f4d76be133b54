"""DanceCam's product around the networks: pipeline, sessions, transport, sinks, server and CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dancecam")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
