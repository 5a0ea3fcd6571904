"""Make the error details that ``buf curl`` prints as base64 readable.

``buf curl`` shows a failed call as Connect's JSON error, each ``google.rpc`` detail as a
type name and the base64 of its bytes. This filter decodes the details it knows
(ErrorInfo, BadRequest and the rest of google/rpc/error_details.proto) in place:

    buf curl --protocol grpc --http2-prior-knowledge ... 2>&1 | python -m clients.error_details
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2

_KNOWN: dict[str, type[Message]] = {
    descriptor.full_name: getattr(error_details_pb2, name)
    for name, descriptor in error_details_pb2.DESCRIPTOR.message_types_by_name.items()
}


def decode_detail(detail: dict[str, Any]) -> dict[str, Any]:
    """One ``{"type", "value"}`` detail with its message decoded as ``"debug"``; unchanged
    when the type is unknown or the value is not its base64."""
    message_class = _KNOWN.get(str(detail.get("type", "")))
    value = detail.get("value")
    if message_class is None or not isinstance(value, str):
        return detail
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_")
        message = message_class.FromString(raw)
    except (ValueError, DecodeError):
        return detail
    decoded = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return {"type": detail["type"], "debug": decoded}


def readable(error: dict[str, Any]) -> dict[str, Any]:
    """A Connect JSON error with its details decoded."""
    details = error.get("details")
    if not isinstance(details, list):
        return error
    return {**error, "details": [decode_detail(d) if isinstance(d, dict) else d for d in details]}


def main() -> int:
    text = sys.stdin.read()
    start = text.find("{")
    if start < 0:
        sys.stdout.write(text)
        return 0
    try:
        error = json.loads(text[start:])
    except json.JSONDecodeError:
        sys.stdout.write(text)  # not an error document: pass it through untouched
        return 0
    sys.stdout.write(text[:start])
    print(json.dumps(readable(error), indent=2))
    return 1 if isinstance(error, dict) and "code" in error else 0  # a failed call fails


if __name__ == "__main__":
    sys.exit(main())
