"""JSON responses that stay valid JSON whatever text a stored row holds."""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.responses import JSONResponse

from resolvers.text import scrub

# What refused text looks like once dumped: C0 controls as \u00XX escapes (tab and line breaks
# have short escapes of their own and are fine), \b and \f, raw DEL/C1 controls and surrogates.
# A false alarm (an escaped backslash followed by "u0000") only costs a scrub that changes
# nothing.
_SUSPECT = re.compile(r"\\u00[01][0-9a-fA-F]|\\[bf]|[\x7f-\x9f\ud800-\udfff]")


class SafeJSONResponse(JSONResponse):
    """Text that should never have been stored (a NUL, a lone surrogate) is shown as U+FFFD.

    A lone surrogate cannot be encoded as UTF-8 at all: left alone it turns the answer into
    a bare 500 with no request id, for as long as the row is there.
    """

    def render(self, content: Any) -> bytes:
        text = _dumps(content)
        if _SUSPECT.search(text):
            text = _dumps(scrub(content))
        return text.encode("utf-8")


def _dumps(content: Any) -> str:
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
