"""InboundStreams: the read side of one connection's streams, decoded into frames.

Sans-I/O: fed the bytes QUIC delivers per stream, it returns the frames they complete
and enforces what each stream may carry; it sends nothing and closes nothing.

Adapter contract: one instance per verified connection. ``opened(stream_id, outbound)``
for each stream this node opens; ``receive(stream_id, data, end_stream)`` for every
chunk of stream data (it raises :class:`~nodosum.errors.FrameError` for bytes or frames
the stream may not carry: then abort the stream and ``drop(stream_id, aborted=True)``;
an :class:`ImpersonationError` means the peer claimed another node id: close the whole
connection); ``drop(stream_id)`` when a stream ends or is reset.

A stream this node opened carries only RESPONSE frames back; a stream the peer opened
starts with STREAM_INIT (naming the application and stream) and then carries DATA and
REQUEST frames.
"""

from __future__ import annotations

from typing import Any

from ..errors import FrameError
from .frames import Frame, FrameDecoder, ResponseFrame, StreamInit

MAX_ABORTED_REMEMBERED = 1024


class ImpersonationError(FrameError):
    """A STREAM_INIT names a node other than the one the connection's certificate proved."""


class StreamState:
    """One stream's decoder and what the stream carries."""

    __slots__ = ("decoder", "outbound", "app_id", "name", "delivery")

    def __init__(self, decoder: FrameDecoder, outbound: Any = None) -> None:
        self.decoder = decoder
        self.outbound = outbound  # the registry's OutboundStream when this node opened it
        self.app_id = ""
        self.name = ""
        self.delivery: Any = None  # the ordered queue of its DATA messages, made on first use


class InboundStreams:
    """Every stream of one connection that is being read."""

    __slots__ = ("peer_id", "max_frame_size", "_ours", "streams", "_aborted", "handling")

    def __init__(self, peer_id: str, dialled: bool, max_frame_size: int) -> None:
        self.peer_id = peer_id
        self.max_frame_size = max_frame_size
        self._ours = 0 if dialled else 1  # low bit of the ids of streams this node opens (RFC 9000)
        self.streams: dict[int, StreamState] = {}
        # streams we aborted: data still in flight on them is ignored, not decoded afresh
        self._aborted: dict[int, None] = {}
        self.handling = 0  # requests from the peer being handled (the connection is not quiet)

    def opened(self, stream_id: int, outbound: Any) -> None:
        self.streams[stream_id] = StreamState(FrameDecoder(self.max_frame_size, expect_init=False), outbound)

    def receive(self, stream_id: int, data: bytes, end_stream: bool) -> tuple[StreamState, list[Frame]] | None:
        """The frames ``data`` completes on the stream, or None for a stream already dropped."""
        state = self.streams.get(stream_id)
        if state is None:
            if (stream_id & 1) == self._ours or stream_id in self._aborted:
                return None
            state = self.streams[stream_id] = StreamState(FrameDecoder(self.max_frame_size))
        frames = state.decoder.feed(data) if data else []
        if state.outbound is not None:
            for frame in frames:
                if frame.__class__ is not ResponseFrame:
                    raise FrameError(f"unexpected {type(frame).__name__} on a stream this node opened")
        else:
            for frame in frames:
                if frame.__class__ is StreamInit:
                    if frame.node_id != self.peer_id:
                        raise ImpersonationError(f"peer with certificate for {self.peer_id!r} claims to be "
                                                 f"{frame.node_id!r}")
                    state.app_id, state.name = frame.app_id, frame.stream_name
                elif frame.__class__ is ResponseFrame:
                    raise FrameError("unexpected RESPONSE on a stream the peer opened")
        if end_stream and state.decoder.buffered:
            raise FrameError(f"stream ended inside a frame ({state.decoder.buffered} bytes left over)")
        return state, frames

    def drop(self, stream_id: int, aborted: bool = False) -> StreamState | None:
        """Stop reading a stream; an aborted one stays remembered so late data is ignored."""
        if aborted:
            self._aborted[stream_id] = None
            if len(self._aborted) > MAX_ABORTED_REMEMBERED:
                del self._aborted[next(iter(self._aborted))]
        return self.streams.pop(stream_id, None)


__all__ = ["ImpersonationError", "InboundStreams", "StreamState"]
