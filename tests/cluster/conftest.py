"""The browser tests' fixtures (one Chromium with a fake camera, the artifacts folder), for the cluster's page test."""

from tests.web.conftest import artifacts, browser, camera_clip, playwright  # noqa: F401
