"""An answer given without reading the body still drains it, so the web server does not reset the
connection under a proxy that is still streaming the body (nginx would answer 502 instead)."""

import io

from django.core.handlers.wsgi import WSGIHandler


def _post(path: str, body: bytes) -> tuple[int, io.BytesIO]:
    stream = io.BytesIO(body)
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "HTTP_HOST": "testserver",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": stream,
        "wsgi.url_scheme": "http",
        "wsgi.errors": io.StringIO(),
    }
    statuses = []
    response = WSGIHandler()(environ, lambda status, headers, *_: statuses.append(status))
    b"".join(response)
    response.close()
    return int(statuses[0].split()[0]), stream


def test_a_refused_request_has_its_body_read_before_the_answer(db):
    body = b"[" + b"1," * (1024 * 1024) + b"1]"
    status, stream = _post("/api/v1/profiles/bulk/", body)
    assert status in (401, 403)
    assert stream.tell() == len(body)


def test_a_body_above_the_upload_limit_is_not_read_in_vain(db, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = b"x" * 4096
    status, stream = _post("/api/v1/profiles/bulk/", body)
    assert status in (401, 403)
    assert stream.tell() < len(body)
