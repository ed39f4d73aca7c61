"""One gRPC call over raw HTTP/2 (the `h2` library), for requests a gRPC client will not send:
extra pseudo-standard headers such as `content-length`, or bodies of any size.

    status, message, frames = grpc_call("127.0.0.1:8080", "/switchyard.v1.Inference/Generate",
                                        request.SerializeToString(), {"content-length": "…"})
"""

from __future__ import annotations

import socket
import struct
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events


def frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    return struct.pack(">BI", 0, len(message)) + message


def unframe(body: bytes) -> list[bytes]:
    out, i = [], 0
    while i + 5 <= len(body):
        _, n = struct.unpack(">BI", body[i : i + 5])
        out.append(body[i + 5 : i + 5 + n])
        i += 5 + n
    return out


def grpc_call(
    target: str,
    path: str,
    message: bytes,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, str, list[bytes]]:
    """(grpc-status, grpc-message, response messages) of one unary-request call."""
    host, port = target.rsplit(":", 1)
    body = frame(message)
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(
        stream,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", target),
            (":path", path),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *(headers or {}).items(),
        ],
    )
    sent = 0
    data = b""
    fields: dict[str, str] = {}
    try:
        sock.sendall(conn.data_to_send())
        while True:
            while sent < len(body):  # as much as the flow-control window allows
                window = min(conn.local_flow_control_window(stream), conn.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk = body[sent : sent + window]
                sent += len(chunk)
                conn.send_data(stream, chunk, end_stream=sent == len(body))
            sock.sendall(conn.data_to_send())
            raw = sock.recv(65536)
            if not raw:
                break
            for event in conn.receive_data(raw):
                if isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    fields.update((k.decode(), v.decode()) for k, v in event.headers)
                elif isinstance(event, h2.events.StreamReset):
                    # NO_ERROR after a complete answer: the server stops an upload it refused.
                    if event.error_code != 0 or "grpc-status" not in fields:
                        raise ConnectionError(f"stream reset: error code {event.error_code}")
            if "grpc-status" in fields:
                break
    finally:
        sock.close()
    return int(fields["grpc-status"]), unquote(fields.get("grpc-message", "")), unframe(data)
