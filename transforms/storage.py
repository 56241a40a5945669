"""One small interface over gs:// locations and local folders, plus reading source files.

`open_storage(url)` gives a `Storage` rooted at `gs://bucket/prefix` or at a folder; object names are relative
to that root and may contain "/". Writes are atomic and overwrite, so rewriting a name with the same bytes (as
a retried bundle does) is safe. Storage objects hold no client and pickle cheaply into Beam DoFns; the GCS
client is built once per process by `gcs_client()`.
"""

from __future__ import annotations

import base64
import functools
import glob
import hashlib
import os
import re
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

import google_crc32c

if TYPE_CHECKING:
    from google.cloud.storage import Client

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
EMULATOR_PROJECT = "ctexport-local"
GCS_MAX_NAME_BYTES = 1024
LOCAL_MAX_NAME_BYTES = 255
# Resumable uploads send files in chunks of this size (a multiple of 256 KiB): one chunk is held in memory
# and resent on a retry. Files up to 8 MiB go in one request.
UPLOAD_CHUNK_BYTES = 16 * 1024 * 1024
READ_CHUNK_BYTES = 8 * 1024 * 1024
# A 410 on a resumable upload means its session is gone: start the upload again, this many times in all.
# So does a 404 on a request to the session: GCS gives it for an expired session, and fake-gcs-server for a
# session that completed when the client never saw the answer (GCS answers 200 with the object then).
_UPLOAD_ATTEMPTS = 3
# Retries of every GCS call (DESIGN.md, "GCS facts"): 408, 429, 5xx, connection resets and timeouts are
# retried with exponential backoff and jitter (RETRY_INITIAL_S, doubling up to RETRY_MAX_S) for at most
# RETRY_DEADLINE_S per call; each HTTP request waits at most REQUEST_TIMEOUT_S for an answer. A fault that
# outlasts the deadline fails the call with its last error, so the run fails (exit 1) instead of hanging.
# Module-level so tests (and a worker's setup) can shrink them; they are read at each call.
RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 30.0
RETRY_DEADLINE_S = 120.0
REQUEST_TIMEOUT_S = 60.0
_TMP_MARK = ".ctexport-tmp-"
_GLOB_CHARS = re.compile(r"[*?\[]")

_CONTENT_TYPES = {
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".csv": "text/csv",
    ".xml": "application/xml",
    ".parquet": "application/octet-stream",
    ".gz": "application/gzip",
}


def is_gcs(url: str) -> bool:
    return url.startswith("gs://")


def content_type(name: str) -> str:
    """Content type by the name's last extension; a .gz is stored as gzip bytes, never transcoded."""
    return _CONTENT_TYPES.get(os.path.splitext(name)[1].lower(), "application/octet-stream")


def _emulator_endpoint() -> str | None:
    host = os.environ.get(EMULATOR_ENV)
    if not host:
        return None
    return host if "://" in host else f"http://{host}"


def gcs_client() -> Client:
    """The process's google.cloud.storage.Client.

    With STORAGE_EMULATOR_HOST set: anonymous credentials and a fixed project, so no credential probing.
    Otherwise Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS included).
    """
    return _client_for(_emulator_endpoint(), os.getpid())


@functools.lru_cache(maxsize=4)
def _client_for(endpoint: str | None, pid: int) -> Client:
    from google.cloud import storage

    if endpoint is None:
        return storage.Client()
    from google.auth.credentials import AnonymousCredentials

    return storage.Client(
        project=EMULATOR_PROJECT,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint},
    )


def _retry():
    """google-cloud-storage's retry predicate with this module's backoff and deadline."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_delay(
        initial=RETRY_INITIAL_S, maximum=RETRY_MAX_S, multiplier=2.0
    ).with_timeout(RETRY_DEADLINE_S)


def _calls() -> dict:
    """Keyword arguments of every GCS call: the retry policy and the per-request timeout."""
    return {"retry": _retry(), "timeout": REQUEST_TIMEOUT_S}


def crc32c_b64(data_or_path: bytes | bytearray | memoryview | str | os.PathLike) -> str:
    """CRC32C as GCS reports it (base64 of the big-endian 4 bytes), of bytes or of a file read in chunks."""
    checksum = google_crc32c.Checksum()
    if isinstance(data_or_path, bytes | bytearray | memoryview):
        checksum.update(bytes(data_or_path))  # the C extension takes bytes only; bytes(b) is b itself
    else:
        with open(data_or_path, "rb") as f:
            while chunk := f.read(READ_CHUNK_BYTES):
                checksum.update(chunk)
    return base64.b64encode(checksum.digest()).decode("ascii")


def split_gcs_url(url: str) -> tuple[str, str]:
    """gs://bucket/some/path -> ("bucket", "some/path")."""
    if not is_gcs(url):
        raise ValueError(f"not a gs:// url: {url!r}")
    bucket, _, path = url[len("gs://") :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {url!r}")
    return bucket, path


@dataclass(frozen=True)
class ObjectInfo:
    name: str  # relative to the storage root
    size: int
    crc32c: str  # base64, big-endian, as GCS reports it; "" from a local list(checksums=False)


class Storage(ABC):
    """A place objects are written to: a gs:// bucket and prefix, or a local folder."""

    url: str

    def display(self, name: str) -> str:
        """The full url or path of an object name, for messages."""
        return f"{self.url}/{name}"

    @abstractmethod
    def name_budget(self) -> int:
        """How many UTF-8 bytes an object name relative to the root may have."""

    @abstractmethod
    def write_bytes(self, name: str, data: bytes) -> None: ...

    @abstractmethod
    def write_file(self, name: str, local_path: str) -> None:
        """Upload a local (spool) file as object `name`; the local file is left in place."""

    def move_file(self, name: str, local_path: str) -> None:
        """Store a local (spool) file as object `name`; the local file may be gone afterwards."""
        self.write_file(name, local_path)

    @abstractmethod
    def rename(self, name: str, new_name: str) -> None:
        """Give object `name` the name `new_name` (replacing any object of that name). Idempotent: when `name`
        is gone and `new_name` exists, an earlier call did it."""

    @abstractmethod
    def read_bytes(self, name: str) -> bytes:
        """The object's bytes; FileNotFoundError when it does not exist."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str, checksums: bool = True) -> list[ObjectInfo]:
        """Objects whose relative name starts with `prefix`, recursively, sorted by name. `checksums`
        False: a caller that needs only names and sizes (a local folder then reads no file; GCS lists its
        CRC32C with the name either way)."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Delete the object; a missing one is fine."""

    def discard_temporaries(self) -> int:
        """Remove temporary files this storage's group left (an attempt killed mid-write); how many."""
        return 0

    @abstractmethod
    def check_location(self) -> str | None:
        """None when the location is usable, else one line saying what is wrong and what to change."""

    def _check_name(self, name: str) -> None:
        if not name or "\r" in name or "\n" in name:
            raise ValueError(f"invalid object name {name!r}")
        if self._too_long(name):
            raise ValueError(f"object name longer than {self.name_budget()} bytes for {self.url}: {name!r}")

    def _too_long(self, name: str) -> bool:
        return len(name.encode()) > self.name_budget()


class GcsStorage(Storage):
    """Objects under gs://bucket/prefix; name "x/y" is object "prefix/x/y"."""

    def __init__(self, url: str):
        bucket, path = split_gcs_url(url.rstrip("/"))
        self.bucket_name = bucket
        self.prefix = path.strip("/")
        self.url = f"gs://{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self._root = f"{self.prefix}/" if self.prefix else ""

    def __repr__(self) -> str:
        return f"GcsStorage({self.url!r})"

    def name_budget(self) -> int:
        return GCS_MAX_NAME_BYTES - len(self._root.encode())

    def _bucket(self):
        return gcs_client().bucket(self.bucket_name)

    def _blob(self, name: str):
        self._check_name(name)
        blob = self._bucket().blob(self._root + name)
        blob.chunk_size = UPLOAD_CHUNK_BYTES
        return blob

    def _upload(self, name: str, upload) -> None:
        """`upload(blob)`, started afresh when its resumable session is gone (410, or 404 from the session),
        up to _UPLOAD_ATTEMPTS in all; other errors are retried inside the call (`_calls`). Rewriting an object
        with the same bytes is safe: uploads are atomic."""
        from google.api_core.exceptions import GoogleAPICallError

        for attempt in range(1, _UPLOAD_ATTEMPTS + 1):
            try:
                upload(self._blob(name))
                return
            except GoogleAPICallError as e:  # api_core has no class for 410: it arrives as the base class
                session_gone = e.code == 410 or (e.code == 404 and "upload_id=" in str(e))
                if not session_gone or attempt == _UPLOAD_ATTEMPTS:
                    raise

    def write_bytes(self, name: str, data: bytes) -> None:
        self._upload(name, lambda b: b.upload_from_string(data, content_type=content_type(name), **_calls()))

    def write_file(self, name: str, local_path: str) -> None:
        self._upload(
            name, lambda b: b.upload_from_filename(local_path, content_type=content_type(name), **_calls())
        )

    def read_bytes(self, name: str) -> bytes:
        from google.api_core.exceptions import NotFound

        try:
            return self._blob(name).download_as_bytes(**_calls())
        except NotFound as e:
            raise FileNotFoundError(f"{self.display(name)} does not exist") from e

    def exists(self, name: str) -> bool:
        return self._blob(name).exists(**_calls())

    def list(self, prefix: str, checksums: bool = True) -> list[ObjectInfo]:
        blobs = gcs_client().list_blobs(self.bucket_name, prefix=self._root + prefix, **_calls())
        cut = len(self._root)
        infos = [ObjectInfo(b.name[cut:], int(b.size or 0), b.crc32c or "") for b in blobs]
        return sorted(infos, key=lambda i: i.name)

    def delete(self, name: str) -> None:
        from google.api_core.exceptions import NotFound

        try:
            self._blob(name).delete(**_calls())
        except NotFound:
            pass

    def rename(self, name: str, new_name: str) -> None:
        from google.api_core.exceptions import NotFound

        self._check_name(new_name)
        bucket = self._bucket()
        try:  # a copy within the bucket: the bytes stay in GCS
            bucket.copy_blob(self._blob(name), bucket, self._root + new_name, **_calls())
        except NotFound:
            if self.exists(new_name):
                return
            raise FileNotFoundError(f"{self.display(name)} does not exist") from None
        self.delete(name)

    def check_location(self) -> str | None:
        from google.api_core import exceptions as gx

        name = self.bucket_name
        missing = f"bucket {name!r} does not exist; create it or fix the bucket name in {self.url!r}"
        if name != name.lower():  # GCS refuses upper case in bucket names, so no such bucket can exist
            return f"{missing} (bucket names are lower case)"
        try:
            bucket = gcs_client().get_bucket(name, retry=_retry())  # the library's 60 s request timeout
        except gx.NotFound:
            return missing
        except gx.BadRequest:
            return f"{name!r} is not a valid bucket name; fix the bucket name in {self.url!r}"
        except gx.Forbidden:
            # No storage.buckets.get: the object permissions the export needs may still be there.
            try:
                next(iter(gcs_client().list_blobs(name, max_results=1, retry=_retry())), None)
            except gx.NotFound:
                return missing
            except gx.Forbidden:
                return (
                    f"no access to bucket {name!r}; grant the account storage.objects.list, "
                    "storage.objects.create and storage.objects.delete on it"
                )
            return None
        if bucket.name != name:
            return f"{missing} (names are case-sensitive; found {bucket.name!r})"
        return None


class LocalStorage(Storage):
    """Files under a local folder; name "x/y" is the file <folder>/x/y."""

    def __init__(self, url: str, tmp_group: str | None = None):
        self.url = url.rstrip("/") or "/"
        # Temporary files of a group (one export run) carry its tag, so the run can find and remove what a
        # killed attempt left half-written (`discard_temporaries`).
        self._tmp_tag = hashlib.sha1(tmp_group.encode("utf-8")).hexdigest()[:16] if tmp_group else None

    def __repr__(self) -> str:
        return f"LocalStorage({self.url!r})"

    def discard_temporaries(self) -> int:
        if self._tmp_tag is None or not os.path.isdir(self.url):
            return 0
        mark = f"{_TMP_MARK}{self._tmp_tag}-"
        removed = 0
        for folder, _dirs, files in os.walk(self.url):
            for file in files:
                if file.startswith(mark):
                    try:
                        os.remove(os.path.join(folder, file))
                        removed += 1
                    except FileNotFoundError:
                        pass
        return removed

    def display(self, name: str) -> str:
        return os.path.join(self.url, name)

    def name_budget(self) -> int:
        return LOCAL_MAX_NAME_BYTES

    def _too_long(self, name: str) -> bool:
        # A folder limits each path component (the file's base name), not the whole relative name.
        return any(len(part.encode()) > LOCAL_MAX_NAME_BYTES for part in name.split("/"))

    def _path(self, name: str) -> str:
        self._check_name(name)
        parts = name.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"object name {name!r} would leave {self.url!r}")
        return os.path.join(self.url, *parts)

    def _write_atomic(self, name: str, fill) -> None:
        path = self._path(name)
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tag = f"{self._tmp_tag}-" if self._tmp_tag else ""
        tmp = os.path.join(
            folder, f"{_TMP_MARK}{tag}{uuid.uuid4().hex}"
        )  # short: any base name fits the limit
        try:
            fill(tmp)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.remove(tmp)
            except FileNotFoundError:
                pass
            raise

    def write_bytes(self, name: str, data: bytes) -> None:
        def fill(tmp: str) -> None:
            with open(tmp, "wb") as f:
                f.write(data)

        self._write_atomic(name, fill)

    def write_file(self, name: str, local_path: str) -> None:
        self._write_atomic(name, lambda tmp: shutil.copyfile(local_path, tmp))

    def move_file(self, name: str, local_path: str) -> None:
        """Like write_file, but the local file may be moved into place (a rename when on the same device)."""

        def fill(tmp: str) -> None:
            try:
                os.rename(local_path, tmp)
            except OSError:  # another device: copy
                shutil.copyfile(local_path, tmp)

        self._write_atomic(name, fill)

    def rename(self, name: str, new_name: str) -> None:
        src, dst = self._path(name), self._path(new_name)
        try:
            os.replace(src, dst)
        except FileNotFoundError:
            if not os.path.exists(dst):
                raise

    def read_bytes(self, name: str) -> bytes:
        path = self._path(name)
        if os.path.isdir(path):
            raise FileNotFoundError(f"{path} is a folder, not an object")
        with open(path, "rb") as f:
            return f.read()

    def exists(self, name: str) -> bool:
        return os.path.isfile(self._path(name))

    def list(self, prefix: str, checksums: bool = True) -> list[ObjectInfo]:
        # Walk only the deepest folder the prefix fixes.
        sub = prefix.rpartition("/")[0]
        start = os.path.join(self.url, *sub.split("/")) if sub else self.url
        infos = []
        for folder, dirs, files in os.walk(start):
            dirs.sort()
            rel_folder = os.path.relpath(folder, self.url).replace(os.sep, "/")
            for file in files:
                if _TMP_MARK in file:
                    continue
                rel = file if rel_folder == "." else f"{rel_folder}/{file}"
                if rel.startswith(prefix):
                    path = os.path.join(folder, file)
                    crc = crc32c_b64(path) if checksums else ""
                    infos.append(ObjectInfo(rel, os.path.getsize(path), crc))
        return sorted(infos, key=lambda i: i.name)

    def delete(self, name: str) -> None:
        try:
            os.remove(self._path(name))
        except FileNotFoundError:
            pass

    def check_location(self) -> str | None:
        path = self.url
        if os.path.exists(path):
            if not os.path.isdir(path):
                return f"output {path!r} is a file, not a folder; give a folder path"
            if not os.access(path, os.W_OK | os.X_OK):
                return f"output folder {path!r} is not writable; fix its permissions or choose another folder"
            return None
        # Creatable: the nearest existing ancestor is a writable folder. Nothing is created here.
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            return f"output folder {path!r} cannot be created: {parent!r} is a file; choose another folder"
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"output folder {path!r} cannot be created in {parent!r} (not writable); choose another folder"
        return None


def open_storage(url: str, tmp_group: str | None = None) -> Storage:
    """A GcsStorage for "gs://bucket/prefix", else a LocalStorage for the folder path.

    tmp_group: names the writer's group (an export run) in local temporary files; see `discard_temporaries`.
    GCS uploads are atomic and need no temporary objects.
    """
    return GcsStorage(url) if is_gcs(url) else LocalStorage(url, tmp_group)


# ---- reading sources ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceFile:
    url: str
    size: int


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A gs:// object glob as a regex, with the local glob's meaning: * and ? stay within one path level,
    **/ spans zero or more levels, ** any characters, [...] a character class."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":  # a "]" right after "[" or "[!" is literal
                j += 1
            j = pattern.find("]", j)
            if j < 0:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : j].replace("\\", "\\\\").replace("[", "\\[")
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):
                body = "\\" + body
            out.append(f"[{body}]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _expand_gcs(pattern: str) -> list[SourceFile]:
    from google.api_core.exceptions import NotFound

    bucket, path = split_gcs_url(pattern)
    if not path:
        return []
    wildcard = _GLOB_CHARS.search(path)
    try:
        if wildcard is None:
            blob = gcs_client().bucket(bucket).get_blob(path, **_calls())
            return [SourceFile(pattern, int(blob.size or 0))] if blob is not None else []
        regex = _glob_regex(path)
        literal = path[: wildcard.start()]
        blobs = gcs_client().list_blobs(bucket, prefix=literal, **_calls())
        return [
            SourceFile(f"gs://{bucket}/{b.name}", int(b.size or 0))
            for b in blobs
            if not b.name.endswith("/") and regex.match(b.name)
        ]
    except NotFound:  # the bucket does not exist
        return []


def _expand_local(pattern: str) -> list[SourceFile]:
    paths = glob.glob(pattern, recursive=True) if glob.has_magic(pattern) else [pattern]
    return [SourceFile(os.path.abspath(p), os.path.getsize(p)) for p in paths if os.path.isfile(p)]


def expand_sources(patterns: Iterable[str]) -> tuple[list[SourceFile], list[str]]:
    """Files matching the globs (local or gs://), sorted by url without duplicates; and the patterns that
    matched no file. A pattern without a wildcard matches that exact file. Local paths come back absolute."""
    found: dict[str, SourceFile] = {}
    unmatched = []
    for pattern in patterns:
        files = _expand_gcs(pattern) if is_gcs(pattern) else _expand_local(pattern)
        if not files:
            unmatched.append(pattern)
        for f in files:
            found[f.url] = f
    return [found[url] for url in sorted(found)], unmatched


def read_range(url: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of a local or gs:// file; an end past the file's size gives what exists."""
    if end <= start:
        return b""
    if not is_gcs(url):
        with open(url, "rb") as f:
            f.seek(start)
            return f.read(end - start)
    from google.api_core.exceptions import RequestRangeNotSatisfiable

    bucket, path = split_gcs_url(url)
    blob = gcs_client().bucket(bucket).blob(path)
    try:
        return blob.download_as_bytes(start=start, end=end - 1, **_calls())  # `end` is inclusive there
    except RequestRangeNotSatisfiable:  # start at or past the end
        return b""


def open_read(url: str) -> BinaryIO:
    """A streaming binary reader over a local or gs:// file."""
    if not is_gcs(url):
        return open(url, "rb")
    bucket, path = split_gcs_url(url)
    blob = gcs_client().bucket(bucket).blob(path)
    return blob.open("rb", chunk_size=READ_CHUNK_BYTES, **_calls())
