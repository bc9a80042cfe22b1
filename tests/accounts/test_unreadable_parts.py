"""A multipart body's parts whose headers are not UTF-8 are noted as the body is read, whatever the
size of the chunks it is read in (``accounts.middleware._PartHeadersWatch``)."""

import io

import pytest

from accounts.middleware import _PartHeadersWatch

BOUNDARY = b"BoUnDaRy"


def _body(*parts: tuple[bytes, bytes]) -> bytes:
    return (
        b"".join(b"--%s\r\n%s\r\n\r\n%s\r\n" % (BOUNDARY, headers, content) for headers, content in parts)
        + b"--%s--\r\n" % BOUNDARY
    )


@pytest.mark.parametrize("chunk", [1, 7, 64, 65536])
def test_the_parts_whose_headers_are_not_utf8_are_noted_in_any_chunks(chunk):
    body = _body(
        (b'Content-Disposition: form-data; name="encoding"', b"utf-8"),
        (b'Content-Disposition: form-data; name="file"; filename="caf\xe9.csv"', b"external_id\nann\n" * 50),
        (b'Content-Disposition: form-data; name="notes"; filename="caf\xc3\xa9.csv"', b"x\xff" * 3000),
        (b'Content-Disposition: form-data; name="other"; filename="\xff"', b""),
    )
    watch = _PartHeadersWatch(io.BytesIO(body), BOUNDARY)
    read = b""
    while piece := watch.read(chunk):
        read += piece
    assert read == body  # passed through as it is
    assert watch.unreadable == ["file", "other"]


def test_bytes_that_are_not_utf8_in_a_files_content_are_not_taken_for_a_header():
    body = _body((b'Content-Disposition: form-data; name="file"; filename="a.csv"', b"\r\n\xff\r\n\r\n\xfe"))
    watch = _PartHeadersWatch(io.BytesIO(body), BOUNDARY)
    while watch.read(5):
        pass
    assert watch.unreadable == []
