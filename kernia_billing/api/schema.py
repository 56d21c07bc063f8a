"""The OpenAPI inspector of the app's views, independent of the host project's settings.

drf-spectacular's ``extend_schema`` on a view method builds on
``REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"]`` as it is when the module is imported; a
project that never set it (DRF's own default) then fails to generate the schema. This
``extend_schema`` builds on drf-spectacular's ``AutoSchema`` instead, so no
project-wide setting is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import extend_schema as _extend_schema

__all__ = ["AutoSchema", "extend_schema"]


def extend_schema(**kwargs: Any) -> Callable[[Any], Any]:
    annotate = _extend_schema(**kwargs)

    def decorator(f: Any) -> Any:
        if not isinstance(f, type):
            previous = getattr(f, "kwargs", None) or {}
            if "schema" not in previous:
                # Where drf-spectacular looks first for a method's base inspector.
                f.kwargs = {**previous, "schema": AutoSchema}
        return annotate(f)

    return decorator
