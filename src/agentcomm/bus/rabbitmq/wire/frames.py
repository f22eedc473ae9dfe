"""The AMQP 0-9-1 frame layout the fast path reads and writes by hand.

Only what the busiest frames need: a frame's head and end byte, the class and method ids of
Basic.Publish/Deliver/Return/Ack/Nack and Channel.Close(-Ok), and the fixed layout of an ack.
Everything else is framed by aiormq (with pamqp).
"""

from __future__ import annotations

import struct
from typing import Any

from aiormq.abc import AbstractChannel

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_END = 0xCE
FRAME_HEAD = struct.Struct(">BHI")
FRAME_HEAD_SIZE = 7
# A frame's head and its end byte: what a frame costs beyond its payload.
FRAME_OVERHEAD = FRAME_HEAD_SIZE + 1
IDS = struct.Struct(">HH")
TAG_AND_BITS = struct.Struct(">QB")
CONTENT_HEAD = struct.Struct(">HHQ")
ACK = struct.Struct(">BHIHHQBB")

CHANNEL = 20
CHANNEL_CLOSE = 40
CHANNEL_CLOSE_OK = 41
BASIC = 60
BASIC_PUBLISH = 40
BASIC_RETURN = 50
BASIC_DELIVER = 60
BASIC_ACK = 80
BASIC_NACK = 120

HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return FRAME_HEAD.pack(kind, channel, len(payload)) + payload + b"\xce"


def frame_max_of(channel: AbstractChannel) -> int:
    """The largest frame the channel's connection agreed on (0: no limit)."""
    connection: Any = channel.connection
    tune = getattr(connection, "connection_tune", None)
    return int(getattr(tune, "frame_max", 0) or 0)
