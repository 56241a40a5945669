"""transforms.sources: the byte ranges a JSON Lines file is read in, and the lines each range holds."""

from __future__ import annotations

import os
import tempfile

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from transforms.sources import ReadTask, plan_reads, read_lines
from transforms.storage import SourceFile

_BOM = b"\xef\xbb\xbf"


def test_a_file_is_cut_into_the_fewest_ranges_of_equal_size():
    files = [SourceFile("/d/a.jsonl", 100), SourceFile("/d/b.jsonl", 30), SourceFile("/d/c.jsonl.gz", 100)]
    tasks = plan_reads(files, None, 30)
    assert [(t.url, t.start, t.end) for t in tasks] == [
        ("/d/a.jsonl", 0, 25),
        ("/d/a.jsonl", 25, 50),
        ("/d/a.jsonl", 50, 75),
        ("/d/a.jsonl", 75, 100),
        ("/d/b.jsonl", 0, -1),  # no larger than a range: read whole
        ("/d/c.jsonl.gz", 0, -1),  # compressed: read whole
    ]


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(
    lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=25),
    bom=st.booleans(),
    trailing_newline=st.booleans(),
    range_bytes=st.integers(1, 64),
)
def test_the_ranges_of_a_file_hold_each_of_its_lines_once(lines, bom, trailing_newline, range_bytes):
    body = b"\n".join(lines) + (b"\n" if trailing_newline and lines else b"")
    assume(not body.startswith(_BOM))  # such a file starts with a byte order mark, whatever `bom` says
    content = (_BOM if bom else b"") + body
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        tasks = plan_reads([SourceFile(path, len(content))], None, range_bytes)
        if len(content) > range_bytes:
            assert [t.start for t in tasks] == [0] + [t.end for t in tasks[:-1]]
            assert tasks[-1].end == len(content)
            sizes = [t.end - t.start for t in tasks]
            assert max(sizes) <= range_bytes and max(sizes) - min(sizes) <= 1
            assert len(tasks) == -(-len(content) // range_bytes)
        else:
            assert tasks == [ReadTask(path, "jsonl")]
        pieces = [read_lines(t) for t in tasks]
        for data, begin in pieces:
            assert content[begin : begin + len(data)] == data
            if data:  # whole lines: from a line's start to its newline (or the end of the file)
                assert begin == (len(_BOM) if bom else 0) or content[begin - 1 : begin] == b"\n"
                assert data.endswith(b"\n") or begin + len(data) == len(content)
        assert b"".join(data for data, _ in pieces) == body
    finally:
        os.unlink(path)
