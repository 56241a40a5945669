"""transforms.storage against local folders and the GCS emulator, and the emulator's own command line."""

from __future__ import annotations

import os
import pickle
import random
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ctexport.emulator import Emulator, free_port
from transforms import storage
from transforms.storage import (
    GcsStorage,
    LocalStorage,
    ObjectInfo,
    SourceFile,
    crc32c_b64,
    expand_sources,
    gcs_client,
    open_read,
    open_storage,
    read_range,
)

REPO = Path(__file__).resolve().parent.parent

# The CRC-32C check value: CRC32C(b"123456789") = 0xE3069283, base64 of its big-endian bytes.
CHECK_CRC = "4waSgw=="


@pytest.fixture(params=["local", pytest.param("gcs", marks=pytest.mark.emulator)])
def store(request, tmp_path):
    """A Storage rooted below a prefix, so every test also checks the name <-> location mapping."""
    if request.param == "local":
        return open_storage(str(tmp_path / "out" / "run"))
    bucket = request.getfixturevalue("gcs_bucket")
    return open_storage(f"gs://{bucket}/exports/run")


def _raw_gcs_names(bucket: str) -> list[str]:
    return sorted(b.name for b in gcs_client().list_blobs(bucket))


# ---- the Storage interface, on both backends ----------------------------------------------------------------


def test_write_read_exists_overwrite(store):
    store.write_bytes("a/b/c.json", b'{"x": 1}\n')
    assert store.read_bytes("a/b/c.json") == b'{"x": 1}\n'
    assert store.exists("a/b/c.json")
    assert not store.exists("a/b/other.json")
    assert not store.exists("a/b")  # a "folder" is not an object

    store.write_bytes("a/b/c.json", b"second")
    assert store.read_bytes("a/b/c.json") == b"second"


def test_read_missing_raises_file_not_found(store):
    with pytest.raises(FileNotFoundError):
        store.read_bytes("nope.json")


def test_list_is_recursive_sorted_and_filtered_by_prefix(store):
    contents = {
        "r-2.json": b"two",
        "r-10.json": b"ten!",
        "r-1.json": b"",
        "other.csv": b"a,b\n",
        "sub/r-3.json": b"three",
        "_manifests/r-m.json": b"{}",
    }
    for name, data in contents.items():
        store.write_bytes(name, data)

    assert [i.name for i in store.list("r-")] == ["r-1.json", "r-10.json", "r-2.json"]
    assert [i.name for i in store.list("sub/")] == ["sub/r-3.json"]
    assert [i.name for i in store.list("_manifests/r-")] == ["_manifests/r-m.json"]
    assert store.list("zzz") == []
    everything = store.list("")
    assert [i.name for i in everything] == sorted(contents)
    assert everything == [ObjectInfo(n, len(contents[n]), crc32c_b64(contents[n])) for n in sorted(contents)]
    # Names and sizes only (finalize's search for leftovers): the same objects; a local folder reads none.
    quick = store.list("", checksums=False)
    assert [(i.name, i.size) for i in quick] == [(i.name, i.size) for i in everything]
    assert all(i.crc32c in ("", e.crc32c) for i, e in zip(quick, everything, strict=True))


def test_delete(store):
    store.write_bytes("keep.json", b"k")
    store.write_bytes("gone.json", b"g")
    store.delete("gone.json")
    assert not store.exists("gone.json")
    assert [i.name for i in store.list("")] == ["keep.json"]
    store.delete("gone.json")  # missing is fine
    store.delete("never/was.json")
    assert store.read_bytes("keep.json") == b"k"


def test_write_file_round_trips(store, tmp_path):
    spool = tmp_path / "spool.bin"
    spool.write_bytes(b"line\n" * 1000)
    store.write_file("x/part.csv", str(spool))
    assert store.read_bytes("x/part.csv") == b"line\n" * 1000
    assert spool.exists()  # the spool file is left to its owner
    assert store.list("x/") == [ObjectInfo("x/part.csv", 5000, crc32c_b64(b"line\n" * 1000))]


def test_move_file_stores_the_spool_file(store, tmp_path):
    spool = tmp_path / "spool.bin"
    spool.write_bytes(b"row\n" * 1000)
    store.move_file("x/part.json", str(spool))
    assert store.read_bytes("x/part.json") == b"row\n" * 1000
    assert store.list("x/") == [ObjectInfo("x/part.json", 4000, crc32c_b64(b"row\n" * 1000))]


def test_rename_moves_the_object_and_is_idempotent(store):
    store.write_bytes("r-1-~part-0.part", b"data")
    store.write_bytes("r-1-ev-20261125-0-db.json", b"old")  # replaced
    store.rename("r-1-~part-0.part", "r-1-ev-20261125-0-db.json")
    assert store.read_bytes("r-1-ev-20261125-0-db.json") == b"data"
    assert [o.name for o in store.list("r-1-")] == ["r-1-ev-20261125-0-db.json"]
    store.rename("r-1-~part-0.part", "r-1-ev-20261125-0-db.json")  # a retried step: done already
    with pytest.raises(FileNotFoundError):
        store.rename("r-1-~gone.part", "r-1-ev-20261125-1-db.json")


def test_local_move_file_across_devices_copies(tmp_path, monkeypatch):
    store = open_storage(str(tmp_path / "out"))
    spool = tmp_path / "spool.bin"
    spool.write_bytes(b"abc")

    def cross_device(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "rename", cross_device)
    store.move_file("a.json", str(spool))
    assert store.read_bytes("a.json") == b"abc"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.json"], "no temporary file left"


def test_write_file_of_missing_spool_raises_and_writes_nothing(store, tmp_path):
    with pytest.raises(FileNotFoundError):
        store.write_file("x.json", str(tmp_path / "missing.bin"))
    assert store.list("") == []


def test_open_read_streams_the_object(store):
    data = random.Random(1).randbytes(300_000)
    store.write_bytes("big/blob.parquet", data)
    with open_read(store.display("big/blob.parquet")) as f:
        head = f.read(10)
        rest = f.read()
    assert head + rest == data
    assert head == data[:10]


def test_storage_pickles_for_beam(store):
    store.write_bytes("p.json", b"pickled")
    clone = pickle.loads(pickle.dumps(store))
    assert type(clone) is type(store)
    assert clone.url == store.url
    assert clone.read_bytes("p.json") == b"pickled"


def test_names_that_leave_the_root_or_contain_newlines_are_refused(store):
    for bad in ["", "a\nb.json", "a\rb.json"]:
        with pytest.raises(ValueError):
            store.write_bytes(bad, b"x")


# ---- GCS specifics ---------------------------------------------------------------------------------------


@pytest.mark.emulator
def test_gcs_names_map_under_the_prefix(gcs_bucket):
    store = open_storage(f"gs://{gcs_bucket}/p/q/")
    assert isinstance(store, GcsStorage)
    assert store.url == f"gs://{gcs_bucket}/p/q"
    store.write_bytes("x/y.json", b"1")
    open_storage(f"gs://{gcs_bucket}/p/q2").write_bytes("z.json", b"2")  # a sibling prefix

    assert _raw_gcs_names(gcs_bucket) == ["p/q/x/y.json", "p/q2/z.json"]
    assert [i.name for i in store.list("")] == ["x/y.json"]
    assert [i.name for i in open_storage(f"gs://{gcs_bucket}").list("p/")] == ["p/q/x/y.json", "p/q2/z.json"]
    assert store.display("x/y.json") == f"gs://{gcs_bucket}/p/q/x/y.json"


@pytest.mark.emulator
def test_gcs_reported_crc32c_and_content_type(gcs_bucket):
    store = open_storage(f"gs://{gcs_bucket}")
    expected_types = {
        "a.json": "application/json",
        "a.jsonl": "application/x-ndjson",
        "a.csv": "text/csv",
        "a.csv.gz": "application/gzip",
        "a.xml": "application/xml",
        "a.parquet": "application/octet-stream",
    }
    for name in expected_types:
        store.write_bytes(name, b"123456789")
    for name, ctype in expected_types.items():
        blob = gcs_client().bucket(gcs_bucket).get_blob(name)
        assert (blob.content_type, blob.content_encoding, blob.crc32c) == (ctype, None, CHECK_CRC), name


@pytest.mark.emulator
def test_gcs_large_resumable_upload_round_trips(gcs_bucket, tmp_path):
    data = random.Random(20).randbytes(20 * 1024 * 1024 + 123)  # > 8 MiB: a resumable upload in chunks
    spool = tmp_path / "big.parquet"
    spool.write_bytes(data)
    store = open_storage(f"gs://{gcs_bucket}/big")
    store.write_file("big.parquet", str(spool))

    assert crc32c_b64(str(spool)) == crc32c_b64(data)
    assert store.list("") == [ObjectInfo("big.parquet", len(data), crc32c_b64(data))]
    assert store.read_bytes("big.parquet") == data


@pytest.mark.emulator
def test_gcs_name_budget_counts_the_prefix_in_utf8(gcs_bucket):
    assert open_storage(f"gs://{gcs_bucket}").name_budget() == 1024
    store = open_storage(f"gs://{gcs_bucket}/exports/ü")  # "exports/ü/" is 11 bytes
    assert store.name_budget() == 1013
    store.write_bytes("a" * 1013, b"fits")
    assert _raw_gcs_names(gcs_bucket) == ["exports/ü/" + "a" * 1013]
    with pytest.raises(ValueError):
        store.write_bytes("a" * 1014, b"too long")


@pytest.mark.emulator
def test_gcs_check_location(gcs_bucket):
    assert open_storage(f"gs://{gcs_bucket}/any/prefix").check_location() is None

    message = open_storage("gs://no-such-bucket-ctexport/x").check_location()
    assert message is not None
    assert "'no-such-bucket-ctexport' does not exist" in message
    assert "\n" not in message

    upper = gcs_bucket.upper()
    message = open_storage(f"gs://{upper}/x").check_location()
    assert message is not None and f"'{upper}' does not exist" in message


def test_gcs_check_location_without_bucket_metadata_permission(monkeypatch):
    """Without storage.buckets.get the check falls back to listing, which the export needs anyway."""
    from google.api_core.exceptions import Forbidden, NotFound

    class Client:
        def __init__(self, list_error):
            self.list_error = list_error

        def get_bucket(self, name, retry=None):
            raise Forbidden("no storage.buckets.get")

        def list_blobs(self, name, max_results=None, retry=None):
            if self.list_error:
                raise self.list_error
            return iter([])

    store = open_storage("gs://restricted-bucket/out")
    monkeypatch.setattr(storage, "gcs_client", lambda: Client(None))
    assert store.check_location() is None
    monkeypatch.setattr(storage, "gcs_client", lambda: Client(NotFound("gone")))
    assert "bucket 'restricted-bucket' does not exist" in store.check_location()
    monkeypatch.setattr(storage, "gcs_client", lambda: Client(Forbidden("nothing")))
    assert store.check_location().startswith("no access to bucket 'restricted-bucket'; grant")


def test_gcs_urls_need_a_bucket():
    with pytest.raises(ValueError):
        open_storage("gs://")
    with pytest.raises(ValueError):
        open_storage("gs:///prefix")


@pytest.mark.emulator
def test_gcs_client_is_anonymous_and_cached(gcs_emulator):
    from google.auth.credentials import AnonymousCredentials

    client = gcs_client()
    assert client is gcs_client()
    assert isinstance(client._credentials, AnonymousCredentials)
    assert client.project == "ctexport-local"
    assert gcs_emulator.url in client._connection.API_BASE_URL
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in os.environ


# ---- local specifics ---------------------------------------------------------------------------------------


def test_local_names_map_under_the_folder(tmp_path):
    store = open_storage(str(tmp_path / "out") + "/")
    assert isinstance(store, LocalStorage)
    assert store.url == str(tmp_path / "out")
    store.write_bytes("x/y.json", b"1")
    assert (tmp_path / "out" / "x" / "y.json").read_bytes() == b"1"
    assert store.display("x/y.json") == str(tmp_path / "out" / "x" / "y.json")
    for escape in ["../x.json", "/etc/x.json", "a/../../x.json", "a//b.json"]:
        with pytest.raises(ValueError):
            store.write_bytes(escape, b"x")
    assert not (tmp_path / "x.json").exists()


def test_local_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    store = open_storage(str(tmp_path))
    store.write_bytes("f.csv", b"old")
    with open(tmp_path / "f.csv", "rb") as reader:
        store.write_bytes("f.csv", b"new contents")
        assert reader.read() == b"old"  # the file was replaced, not rewritten in place
    assert (tmp_path / "f.csv").read_bytes() == b"new contents"
    for i in range(20):
        store.write_bytes(f"d/{i}.json", b"x" * i)
    assert sorted(os.listdir(tmp_path)) == ["d", "f.csv"]
    assert sorted(os.listdir(tmp_path / "d")) == sorted(f"{i}.json" for i in range(20))


def test_local_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    store = open_storage(str(tmp_path))

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        store.write_bytes("a/f.json", b"data")
    assert os.listdir(tmp_path / "a") == []


def test_local_list_skips_temp_files_of_interrupted_writes(tmp_path):
    store = open_storage(str(tmp_path))
    store.write_bytes("r-1.json", b"1")
    (tmp_path / f"{storage._TMP_MARK}0123abcd").write_bytes(b"half a file")  # as a killed writer leaves it
    assert [i.name for i in store.list("")] == ["r-1.json"]


def test_local_name_budget_is_per_file_name(tmp_path):
    store = open_storage(str(tmp_path))
    assert store.name_budget() == 255
    name = "é" * 127 + "a"  # 255 bytes
    store.write_bytes(f"sub/{name}", b"ok")
    assert store.read_bytes(f"sub/{name}") == b"ok"
    with pytest.raises(ValueError):
        store.write_bytes("é" * 128, b"256 bytes")


def test_local_check_location(tmp_path):
    assert open_storage(str(tmp_path)).check_location() is None
    missing = tmp_path / "new" / "deeper"
    assert open_storage(str(missing)).check_location() is None
    assert not (tmp_path / "new").exists()  # checking creates nothing

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    message = open_storage(str(a_file)).check_location()
    assert message is not None and "is a file, not a folder" in message
    message = open_storage(str(a_file / "sub")).check_location()
    assert message is not None and "cannot be created" in message


def test_crc32c_of_bytes_and_of_a_file(tmp_path):
    assert crc32c_b64(b"123456789") == CHECK_CRC
    assert crc32c_b64(b"") == "AAAAAA=="
    data = random.Random(3).randbytes(9 * 1024 * 1024)  # more than one read chunk
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert crc32c_b64(str(path)) == crc32c_b64(data) == crc32c_b64(memoryview(data))
    assert crc32c_b64(path) == crc32c_b64(data)


# ---- sources -----------------------------------------------------------------------------------------------


def _make_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def test_expand_sources_local(tmp_path):
    _make_tree(
        tmp_path,
        {"a/1.jsonl": b"1", "a/2.jsonl": b"22", "a/b/3.jsonl": b"333", "a/x.avro": b"xxxx", "c/4.jsonl": b""},
    )
    t = str(tmp_path)
    files, unmatched = expand_sources(
        [
            f"{t}/a/*.jsonl",
            f"{t}/a/**/*.jsonl",  # overlaps the first: no duplicates
            f"{t}/a/x.avro",
            f"{t}/nope/*.jsonl",
            f"{t}/missing.avro",
            f"{t}/a",  # a folder is not a file
        ]
    )
    assert files == [
        SourceFile(f"{t}/a/1.jsonl", 1),
        SourceFile(f"{t}/a/2.jsonl", 2),
        SourceFile(f"{t}/a/b/3.jsonl", 3),
        SourceFile(f"{t}/a/x.avro", 4),
    ]
    assert unmatched == [f"{t}/nope/*.jsonl", f"{t}/missing.avro", f"{t}/a"]


def test_expand_sources_local_relative_paths_come_back_absolute(tmp_path, monkeypatch):
    _make_tree(tmp_path, {"in/e.jsonl": b"abc"})
    monkeypatch.chdir(tmp_path)
    assert expand_sources(["in/*.jsonl", "./in/e.jsonl"]) == ([SourceFile(f"{tmp_path}/in/e.jsonl", 3)], [])


@pytest.mark.emulator
def test_expand_sources_gcs(gcs_bucket, tmp_path):
    store = open_storage(f"gs://{gcs_bucket}")
    for name, data in {
        "in/2024/a.jsonl": b"a",
        "in/2024/b.jsonl": b"bb",
        "in/2024/deep/c.jsonl": b"ccc",
        "in/2025/d.jsonl": b"dddd",
        "in/x.parquet": b"xxxxx",
        "other/e.jsonl": b"e",
    }.items():
        store.write_bytes(name, data)
    g = f"gs://{gcs_bucket}"

    def urls(patterns):
        files, unmatched = expand_sources(patterns)
        return [(f.url.removeprefix(g + "/"), f.size) for f in files], unmatched

    assert urls([f"{g}/in/2024/*.jsonl"]) == ([("in/2024/a.jsonl", 1), ("in/2024/b.jsonl", 2)], [])
    assert urls([f"{g}/in/**/*.jsonl"])[0] == [
        ("in/2024/a.jsonl", 1),
        ("in/2024/b.jsonl", 2),
        ("in/2024/deep/c.jsonl", 3),
        ("in/2025/d.jsonl", 4),
    ]
    assert urls([f"{g}/in/202[5-9]/?.jsonl", f"{g}/in/x.parquet"]) == (
        [("in/2025/d.jsonl", 4), ("in/x.parquet", 5)],
        [],
    )
    assert urls([f"{g}/in/*/[!a]*.jsonl", f"{g}/in/2024/a.jsonl"])[0] == [
        ("in/2024/a.jsonl", 1),
        ("in/2024/b.jsonl", 2),
        ("in/2025/d.jsonl", 4),
    ]
    no_match = [f"{g}/in/*.csv", f"{g}/in/2024", f"{g}/in/x.parq", "gs://no-such-bucket-ctexport/*.jsonl"]
    assert urls(no_match) == ([], no_match)

    # Local and gs:// patterns mix; absolute local paths ("/...") sort before gs:// urls.
    _make_tree(tmp_path, {"l.jsonl": b"local"})
    files, unmatched = expand_sources([str(tmp_path / "*.jsonl"), f"{g}/other/*"])
    assert files == [SourceFile(str(tmp_path / "l.jsonl"), 5), SourceFile(f"{g}/other/e.jsonl", 1)]
    assert unmatched == []


RANGE_CASES = [
    ((0, 10), slice(0, 10)),
    ((10, 20), slice(10, 20)),
    ((1000, 1024), slice(1000, 1024)),
    ((1000, 5000), slice(1000, 1024)),  # end past the size: what exists
    ((0, 1024), slice(0, 1024)),
    ((1023, 1024), slice(1023, 1024)),
    ((1024, 1100), slice(0, 0)),  # start at the size
    ((2000, 3000), slice(0, 0)),  # start past the size
    ((5, 5), slice(0, 0)),  # empty range
]


def test_read_range_local(tmp_path):
    data = bytes(range(256)) * 4
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    for (start, end), expected in RANGE_CASES:
        assert read_range(str(path), start, end) == data[expected], (start, end)


@pytest.mark.emulator
def test_read_range_gcs(gcs_bucket):
    data = bytes(range(256)) * 4
    open_storage(f"gs://{gcs_bucket}").write_bytes("src/f.bin", data)
    url = f"gs://{gcs_bucket}/src/f.bin"
    for (start, end), expected in RANGE_CASES:
        assert read_range(url, start, end) == data[expected], (start, end)


# ---- the emulator ------------------------------------------------------------------------------------------


@pytest.mark.emulator
def test_emulator_filesystem_backend_keeps_data_across_restarts(tmp_path):
    root = tmp_path / "data"
    port = free_port()
    with Emulator(port=port, root=str(root)) as emulator:
        assert emulator.url == f"http://127.0.0.1:{port}"
        emulator.create_bucket("kept")
        emulator.create_bucket("kept")  # creating an existing bucket is fine
        body = b"persisted"
        req = urllib.request.Request(
            f"{emulator.url}/upload/storage/v1/b/kept/o?uploadType=media&name=o.txt", data=body, method="POST"
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
    with pytest.raises(OSError):  # stopped: nothing answers
        urllib.request.urlopen(f"http://127.0.0.1:{port}/storage/v1/b", timeout=2)
    with Emulator(port=port, root=str(root)) as emulator:
        with urllib.request.urlopen(f"{emulator.url}/download/storage/v1/b/kept/o/o.txt?alt=media") as resp:
            assert resp.read() == b"persisted"


@pytest.mark.emulator
def test_emulator_start_fails_clearly_when_its_port_is_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(
            RuntimeError, match=r"fake-gcs-server exited with status \d+: .*address already in use"
        ):
            Emulator(port=port).start()


@pytest.mark.emulator
def test_emulator_command_line_start_and_stop(tmp_path):
    port = free_port()
    pidfile = tmp_path / "emu" / "pid"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "ctexport.emulator"]
    started = time.monotonic()
    out = subprocess.run(
        [*cmd, "start", "--port", str(port), "--root", str(tmp_path / "data"), "--bucket", "demo-bucket"]
        + ["--pidfile", str(pidfile)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    try:
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"export STORAGE_EMULATOR_HOST=http://127.0.0.1:{port}"
        assert elapsed < 30
        pid = int(pidfile.read_text())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/storage/v1/b/demo-bucket", timeout=5) as resp:
            assert resp.status == 200

        again = subprocess.run(
            [*cmd, "start", "--port", str(port), "--pidfile", str(pidfile)], env=env, cwd=REPO
        )
        assert again.returncode == 1  # already running
    finally:
        stop = subprocess.run(
            [*cmd, "stop", "--pidfile", str(pidfile)], capture_output=True, text=True, env=env, cwd=REPO
        )
    assert stop.returncode == 0, stop.stderr
    assert re.fullmatch(rf"stopped the emulator \(pid {pid}\)\n", stop.stdout)
    assert not pidfile.exists()
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    """Running, not gone and not a zombie waiting for a reaper (a container's init may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
