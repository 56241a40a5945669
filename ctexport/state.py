"""Where `ctexport` keeps export requests, runs and destinations: JSON objects under a state location, a local
folder or a `gs://bucket/prefix`, so a team shares one Activity Log with no database server.

    requests/<request id>.json              one export request (its options, never key material)
    runs/<request id>/<run timestamp>.json  one run: window, status, attempts, owner and lease, counts, files
    destinations/<name>.json                bucket, prefix and the key file's PATH (never its content)

Every write is conditional, so two processes never both win:
- `create` succeeds only when the object does not exist: GCS `if_generation_match=0` on a simple (not
  resumable) upload; a local folder links a fully written temporary file into place (fails if it exists).
- `update` succeeds only when the object is still the version that was read: GCS `if_generation_match=<the
  generation read>`; a local folder compares the content's digest under an exclusive `flock` and then
  replaces the file atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass

import orjson

from transforms import storage

STATE_ENV = "CTEXPORT_STATE"
DEFAULT_STATE = "~/.ctexport"
_TMP = ".tmp-"
_LOCKS = ".locks"


def default_state_url() -> str:
    return os.environ.get(STATE_ENV) or os.path.expanduser(DEFAULT_STATE)


def encode(data: dict) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n"


@dataclass
class Doc:
    """A state object and the version it was read at (a GCS generation, or a local content digest)."""

    data: dict
    version: object


class StateStore(ABC):
    url: str

    @abstractmethod
    def get(self, name: str) -> Doc | None: ...

    @abstractmethod
    def create(self, name: str, data: dict) -> Doc | None:
        """Write a new object; None when it exists already (someone else created it)."""

    @abstractmethod
    def update(self, name: str, data: dict, version: object) -> Doc | None:
        """Replace the object if it is still at `version`; None when it changed (or vanished) meanwhile."""

    @abstractmethod
    def delete(self, name: str) -> None: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Names of the objects under `prefix`, sorted."""

    def display(self, name: str = "") -> str:
        return f"{self.url}/{name}" if name else self.url

    def modify(self, name: str, change) -> Doc | None:
        """Read-modify-write until it sticks: `change(data)` returns the new data, or None to leave it.
        Returns the stored Doc (None when the object does not exist or `change` declined)."""
        while True:
            doc = self.get(name)
            if doc is None:
                return None
            new = change(dict(doc.data))
            if new is None:
                return None
            stored = self.update(name, new, doc.version)
            if stored is not None:
                return stored


class GcsState(StateStore):
    def __init__(self, url: str):
        bucket, path = storage.split_gcs_url(url.rstrip("/"))
        self.bucket_name = bucket
        self.prefix = path.strip("/")
        self.url = f"gs://{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self._root = f"{self.prefix}/" if self.prefix else ""
        # Held from here on: an export run may switch the process's credentials for its destination.
        self._client = storage.gcs_client()

    def _blob(self, name: str):
        # No chunk_size: small bodies go as simple uploads, where the emulator honours the precondition too.
        return self._client.bucket(self.bucket_name).blob(self._root + name)

    def get(self, name: str) -> Doc | None:
        from google.api_core.exceptions import NotFound

        blob = self._blob(name)
        try:
            raw = blob.download_as_bytes()
        except NotFound:
            return None
        return Doc(orjson.loads(raw), blob.generation)  # the generation of the bytes just read

    def _put(self, name: str, data: dict, generation: int) -> Doc | None:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        payload = encode(data)
        blob = self._blob(name)
        try:
            blob.upload_from_string(payload, content_type="application/json", if_generation_match=generation)
        except (PreconditionFailed, NotFound):
            # A retried upload whose first try landed also ends here: then the object is exactly ours.
            current = self._blob(name)
            try:
                if current.download_as_bytes() == payload:
                    return Doc(data, current.generation)
            except NotFound:
                pass
            return None
        return Doc(data, blob.generation)

    def create(self, name: str, data: dict) -> Doc | None:
        return self._put(name, data, 0)

    def update(self, name: str, data: dict, version: object) -> Doc | None:
        return self._put(name, data, int(version))

    def delete(self, name: str) -> None:
        from google.api_core.exceptions import NotFound

        try:
            self._blob(name).delete()
        except NotFound:
            pass

    def list(self, prefix: str) -> list[str]:
        cut = len(self._root)
        blobs = self._client.list_blobs(self.bucket_name, prefix=self._root + prefix)
        return sorted(b.name[cut:] for b in blobs if b.name.endswith(".json"))


class LocalState(StateStore):
    def __init__(self, url: str):
        self.url = os.path.abspath(os.path.expanduser(url))

    def display(self, name: str = "") -> str:
        return os.path.join(self.url, name) if name else self.url

    def _path(self, name: str) -> str:
        parts = name.split("/")
        if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise ValueError(f"invalid state object name {name!r}")
        return os.path.join(self.url, *parts)

    @staticmethod
    def _digest(raw: bytes) -> str:
        return hashlib.sha256(raw).hexdigest()

    def _read(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def get(self, name: str) -> Doc | None:
        raw = self._read(self._path(name))
        if raw is None:
            return None
        return Doc(orjson.loads(raw), self._digest(raw))

    def _temp(self, path: str, payload: bytes) -> str:
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f"{_TMP}{uuid.uuid4().hex}")
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def create(self, name: str, data: dict) -> Doc | None:
        path = self._path(name)
        payload = encode(data)
        tmp = self._temp(path, payload)
        try:
            os.link(tmp, path)  # atomic, and fails when the name exists: only one creator wins
        except FileExistsError:
            return None
        finally:
            os.remove(tmp)
        return Doc(data, self._digest(payload))

    @contextlib.contextmanager
    def _locked(self, name: str):
        lock_path = os.path.join(self.url, _LOCKS, *name.split("/")) + ".lock"
        os.makedirs(os.path.dirname(lock_path), exist_ok=True)
        with open(lock_path, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def update(self, name: str, data: dict, version: object) -> Doc | None:
        path = self._path(name)
        payload = encode(data)
        with self._locked(name):
            current = self._read(path)
            if current is None or self._digest(current) != version:
                return None
            tmp = self._temp(path, payload)
            try:
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(tmp)
                raise
        return Doc(data, self._digest(payload))

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._path(name))

    def list(self, prefix: str) -> list[str]:
        sub = prefix.rpartition("/")[0]
        start = os.path.join(self.url, *sub.split("/")) if sub else self.url
        names = []
        for folder, dirs, files in os.walk(start):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            rel = os.path.relpath(folder, self.url).replace(os.sep, "/")
            for file in files:
                if file.startswith(".") or not file.endswith(".json"):
                    continue
                name = file if rel == "." else f"{rel}/{file}"
                if name.startswith(prefix):
                    names.append(name)
        return sorted(names)


def open_state(url: str | None = None) -> StateStore:
    url = url or default_state_url()
    return GcsState(url) if storage.is_gcs(url) else LocalState(url)


# ---- names ---------------------------------------------------------------------------------------------------


def request_name(request_id: str) -> str:
    return f"requests/{request_id}.json"


def run_name(request_id: str, run_ts: str) -> str:
    return f"runs/{request_id}/{run_ts}.json"


def runs_prefix(request_id: str) -> str:
    return f"runs/{request_id}/"


def destination_name(name: str) -> str:
    return f"destinations/{name}.json"
