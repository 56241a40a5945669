"""Shared fixtures.

The session never reaches real Google credentials: the key-file variable is removed, gcloud's user
credentials are hidden behind an empty config folder, and the GCE metadata server is neither probed nor
reachable. google.auth.default() then fails at once, so Beam falls back to anonymous access without its
~23 s probe. GCS tests run against a local fake-gcs-server started once per session.
"""

from __future__ import annotations

import sys
import tempfile
import uuid

import pytest

from ctexport.emulator import Emulator

_UNREACHABLE = "127.0.0.1:9"  # discard port: nothing listens, connections fail at once
_session_env = pytest.MonkeyPatch()
_session_tmp = tempfile.TemporaryDirectory(prefix="ctexport-no-gcloud-")


def _isolate_from_real_credentials(mp: pytest.MonkeyPatch) -> None:
    mp.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    mp.delenv("STORAGE_EMULATOR_HOST", raising=False)
    mp.setenv("CLOUDSDK_CONFIG", _session_tmp.name)
    mp.setenv("NO_GCE_CHECK", "true")
    mp.setenv("GCE_METADATA_HOST", _UNREACHABLE)
    mp.setenv("GCE_METADATA_IP", _UNREACHABLE)
    # google-auth reads these when first imported; cover the case that something imported it already.
    metadata = sys.modules.get("google.auth.compute_engine._metadata")
    if metadata is not None:
        mp.setattr(metadata, "_NO_GCE_CHECK", True)
        mp.setattr(metadata, "_GCE_METADATA_HOST", _UNREACHABLE)


def pytest_configure(config: pytest.Config) -> None:
    _isolate_from_real_credentials(_session_env)


def pytest_unconfigure(config: pytest.Config) -> None:
    _session_env.undo()
    _session_tmp.cleanup()


@pytest.fixture(scope="session")
def gcs_emulator():
    """A fake-gcs-server (memory backend) on a free port, with STORAGE_EMULATOR_HOST pointing at it."""
    with Emulator() as emulator, pytest.MonkeyPatch.context() as mp:
        mp.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        mp.setenv("STORAGE_EMULATOR_HOST", emulator.url)
        if "apache_beam" in sys.modules:
            # Beam's gs:// IO retries google.auth.default() with backoff (~24 s) even when it fails at once;
            # settle its per-process cache on "anonymous", which is where that probe ends anyway.
            from apache_beam.internal.gcp import auth

            mp.setattr(auth._Credentials, "_credentials_init", True)
            mp.setattr(auth._Credentials, "_credentials", None)
        yield emulator


@pytest.fixture
def gcs_bucket(gcs_emulator: Emulator) -> str:
    """A fresh, empty bucket on the session's emulator; returns its name."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    gcs_emulator.create_bucket(name)
    return name
