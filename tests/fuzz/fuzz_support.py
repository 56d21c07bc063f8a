"""The checks the fuzzer applies to every response besides schemathesis' own."""

from __future__ import annotations

from schemathesis import check


@check
def error_shape(ctx, response, case) -> bool | None:
    """Every 4xx/5xx is JSON ``{"error": {"code": str, "message": str, "fields": dict}}``."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, f"not the error shape: {body!r}"
    error = body["error"]
    assert set(error) == {"code", "message", "fields"}, f"not the error shape: {body!r}"
    assert isinstance(error["code"], str) and error["code"], body
    assert isinstance(error["message"], str), body
    assert isinstance(error["fields"], dict), body
    return True


@check
def no_server_error(ctx, response, case) -> bool | None:
    """No 5xx: bad input is the caller's error, never the server's."""
    if response.status_code < 500:
        return None
    raise AssertionError(f"server error {response.status_code}: {response.text[:300]}")
