"""JSON responses that stay valid JSON whatever text a stored row holds."""

from __future__ import annotations

import re
from typing import Any

import orjson
from starlette.responses import JSONResponse

from resolvers.text import scrub

# How json.dumps writes the C0 controls but tab and line breaks (\u00XX, \b, \f). Searched
# only when the body has a backslash at all (one memchr); a false alarm (an escaped backslash
# followed by "u00") costs a scrub that changes nothing.
_ESCAPED_CONTROL = re.compile(rb"\\(?:u00|b|f)")


class SafeJSONResponse(JSONResponse):
    """Text that should never have been stored (a NUL, a lone surrogate) is shown as U+FFFD.

    A lone surrogate cannot be encoded as UTF-8 at all: left alone it turns the answer into
    a bare 500 with no request id, for as long as the row is there.
    """

    def render(self, content: Any) -> bytes:
        # orjson: serializing an answer with the json module cost more than running a compiled
        # plan. It refuses a lone surrogate outright, which is when the text is scrubbed.
        try:
            body = orjson.dumps(content)
        except orjson.JSONEncodeError:
            return orjson.dumps(scrub(content))
        if b"\\" in body and _ESCAPED_CONTROL.search(body):
            return orjson.dumps(scrub(content))
        return body
