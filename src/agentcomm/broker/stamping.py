"""Reading a bus message once, and writing a routed one without re-encoding the whole envelope.

A routed message is the sender's envelope with three fields changed (receiver, status, hops).
Copying the validated model and serialising every field again cost the broker more than all
of its routing rules together; parsing the JSON once into a dict, validating that dict, and
writing the same dict back with the three fields stamped does the same job.

The stamped dict is written only when it names each field by its wire name and carries its
own message_id: a message spelled another accepted way (`hops` for `_hops`), or one whose id
the broker's validation made up, is encoded from the model as before, so that the output is
always what the model would say.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from agentcomm.protocol.codec import message_type_of, parse_json_object, validate_model
from agentcomm.protocol.models import Envelope
from agentcomm.protocol.vocabulary import RoutingStatus

_WIRE_NAMES = frozenset(field.alias or name for name, field in Envelope.model_fields.items())
_ROUTED = RoutingStatus.ROUTED.value


def decode_fields(raw: bytes) -> tuple[Envelope, dict[str, Any]]:
    """The envelope, and the JSON object it was read from.

    Raises ProtocolError with the same codes and texts as `codec.decode_envelope`.
    """
    fields = parse_json_object(raw)
    try:
        return Envelope.model_validate(fields), fields
    except ValidationError:
        pass
    # Step by step, so that the error names what is wrong as decode_envelope does.
    message_type_of(fields)
    return validate_model(Envelope, fields), fields


def routed_body(fields: dict[str, Any], receiver_id: str, hops: int) -> bytes | None:
    """The routed message's JSON, or None when it must be encoded from the model instead.

    Changes `fields` (it is the broker's own copy of this one message).
    """
    if "message_id" not in fields or not fields.keys() <= _WIRE_NAMES:
        return None
    fields["receiver_id"] = receiver_id
    fields["routing_status"] = _ROUTED
    fields["_hops"] = hops
    return orjson.dumps(fields)
