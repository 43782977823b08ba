"""How a worker should serve gRPC, and what the gRPC transport costs, measured side by side.

Each round starts one process per design and drives it with h2load at 1 and 64 connections (one
call in flight on each; wrk for HTTP); designs alternate round by round so load drift hits all
alike. Process CPU per call is reported (onnxruntime's threads included): it is robust to the
shared machine's load where calls/s and p50 are not. Designs:

- `server:http`, `server:grpc`: `tapeserve serve` itself (one worker, 8 threads), its HTTP binary
  path (wrk) or its gRPC port; the worker process's CPU. The baseline the targets name.
- `pool:N`: the worker's gRPC server (serve/grpc/server.py) with a pool of N threads, in a bare
  process building the same worker (`create_app`) on the CNN of benchmarks/serving.py; calls go
  to `InferenceCore.serve` (an idle model runs the call in the pool thread).
- `aio`: grpc.aio on a uvloop event loop, calls to `InferenceCore.serve_async`.
- `grpclib`: grpclib (HTTP/2 by the pure-Python h2, on uvloop), calls to `serve_async`.
- `nghttp2`: HTTP/2 by libnghttp2 (C, through ctypes) on uvloop, gRPC framing and protobuf by
  hand, calls to `serve_async`: a measurement of an HTTP/2 front end on the event loop with a C
  parser, not a server (no deadlines, metadata, errors, streaming). Needs libnghttp2.so.14
  (Debian's libnghttp2-14, which h2load's package brings).
- `echo:N`, `h2-echo`, `nghttp2-echo`: the transport alone, a canned answer and no inference:
  grpcio's thread pool server of N threads, the pure-Python h2 on uvloop, or libnghttp2 on uvloop.

A design may name a preset of gRPC C-core settings after `@` (PRESETS: `iomgr`, `poll`), e.g.
`server:grpc@iomgr`.

    .venv/bin/python benchmarks/grpc_designs.py [--designs server:http,server:grpc,pool:8]
        [--rounds 3] [--model cnn] [--duration 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.serving import (  # noqa: E402
    GRPC_PATH,
    build_model,
    grpc_body,
    run_h2load,
    run_wrk,
    sample,
    v2_body,
    write_repository,
)
from tests.support.server import free_port, start_server  # noqa: E402

#: Environment presets a design may name after `@` (e.g. `pool:8@iomgr`): gRPC C-core switches.
PRESETS = {
    # the C core's older I/O manager: the thread waiting on the completion queue polls the
    # sockets itself (no hand-off from EventEngine's threads to it)
    "iomgr": {
        "GRPC_EXPERIMENTS": "-event_engine_listener,-event_engine_for_all_other_endpoints,"
        "-event_engine_callback_cq"
    },
}
#: the same, with poll(2) in place of epoll
PRESETS["poll"] = {**PRESETS["iomgr"], "GRPC_POLL_STRATEGY": "poll"}

#: One design, serving in its own process until killed: `python -c SERVE design repo port`.
SERVE = r"""
import asyncio, sys, time
from concurrent import futures
import grpc
from serve.app import create_app
from serve.grpc.codec import GRPC
from serve.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from serve.settings import Settings

design, repo, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
worker = create_app(Settings(model_repository=repo, log_level="warning", workers=1))
assert worker.core.registry.wait_loaded(60)
core = worker.core

if design == "aio":
    import uvloop

    class Aio(pb_grpc.GRPCInferenceServiceServicer):
        async def ModelInfer(self, request, context):
            async def read():
                return request
            call = await core.serve_async(GRPC, request.model_name, None, read)
            if call.failure is not None:
                await context.abort(grpc.StatusCode[call.failure.code.grpc], call.failure.message)
            return call.body

    async def main():
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(Aio(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        await asyncio.sleep(3600)

    uvloop.install()
    asyncio.run(main())
elif design == "grpclib":
    import uvloop
    from grpclib.const import Cardinality, Handler
    from grpclib.server import Server
    from serve.grpc.generated import grpc_service_pb2 as pb

    class Lib:
        async def infer(self, stream):
            request = await stream.recv_message()
            async def read():
                return request
            call = await core.serve_async(GRPC, request.model_name, None, read)
            await stream.send_message(call.body)

        def __mapping__(self):
            return {"/inference.GRPCInferenceService/ModelInfer": Handler(
                self.infer, Cardinality.UNARY_UNARY, pb.ModelInferRequest, pb.ModelInferResponse)}

    async def main():
        server = Server([Lib()])
        await server.start("127.0.0.1", port)
        print("ready", flush=True)
        await asyncio.sleep(3600)

    uvloop.install()
    asyncio.run(main())
elif design.startswith("echo:"):
    # gRPC alone: a canned answer, no inference core (what the transport costs per call)
    from serve.grpc.generated import grpc_service_pb2 as pb

    answer = pb.ModelInferResponse(model_name="echo", raw_output_contents=[bytes(40)])

    class Echo(pb_grpc.GRPCInferenceServiceServicer):
        def ModelInfer(self, request, context):
            return answer

    server = grpc.server(futures.ThreadPoolExecutor(int(design.split(":")[1])))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Echo(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    time.sleep(3600)
elif design == "h2-echo":
    # the same canned answer from HTTP/2 on the event loop (h2, uvloop): what an h2 front end's
    # transport would cost per call, before any gRPC feature
    import h2.config, h2.connection, h2.events, uvloop
    from serve.grpc.generated import grpc_service_pb2 as pb

    message = pb.ModelInferResponse(model_name="echo", raw_output_contents=[bytes(40)])
    message = message.SerializeToString()
    framed = b"\0" + len(message).to_bytes(4, "big") + message
    head = [(":status", "200"), ("content-type", "application/grpc")]
    config = h2.config.H2Configuration(client_side=False, header_encoding=None)

    class H2(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.conn = h2.connection.H2Connection(config)
            self.conn.initiate_connection()
            transport.write(self.conn.data_to_send())

        def data_received(self, data):
            conn = self.conn
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ConnectionTerminated):  # h2load is done
                    self.transport.close()
                    return
                if isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    sid = event.stream_id
                    conn.send_headers(sid, head)
                    conn.send_data(sid, framed)
                    conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)
            self.transport.write(conn.data_to_send())

    async def main():
        loop = asyncio.get_running_loop()
        await loop.create_server(H2, "127.0.0.1", port)
        print("ready", flush=True)
        await asyncio.sleep(3600)

    uvloop.install()
    asyncio.run(main())
elif design in ("nghttp2", "nghttp2-echo"):
    # HTTP/2 by libnghttp2 (C; the library h2load is built on) through ctypes on uvloop: the
    # canned answer (what such a front end's transport costs per call), or ModelInfer through
    # `serve_async` (gRPC framing and protobuf by hand; no deadlines, metadata or errors beyond
    # grpc-status: a measurement, not a server)
    import ctypes, uvloop
    from serve.grpc.generated import grpc_service_pb2 as pb

    message = pb.ModelInferResponse(model_name="echo", raw_output_contents=[bytes(40)])
    message = message.SerializeToString()
    framed = b"\0" + len(message).to_bytes(4, "big") + message
    lib = ctypes.PyDLL("libnghttp2.so.14")  # keeps the GIL: no hand-off per call into C
    P, S, I = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
    SS = ctypes.c_ssize_t

    class FrameHd(ctypes.Structure):
        _fields_ = [("length", S), ("stream_id", ctypes.c_int32), ("type", ctypes.c_uint8),
                    ("flags", ctypes.c_uint8)]

    class Nv(ctypes.Structure):
        _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_char_p), ("namelen", S),
                    ("valuelen", S), ("flags", ctypes.c_uint8)]

    READ = ctypes.CFUNCTYPE(SS, P, ctypes.c_int32, ctypes.POINTER(ctypes.c_uint8), S,
                            ctypes.POINTER(ctypes.c_uint32), P, P)

    class DataProvider(ctypes.Structure):
        _fields_ = [("source", P), ("read_callback", READ)]

    FRAME = ctypes.CFUNCTYPE(I, P, ctypes.POINTER(FrameHd), P)
    HEADER = ctypes.CFUNCTYPE(I, P, ctypes.POINTER(FrameHd), ctypes.POINTER(ctypes.c_char), S,
                              ctypes.POINTER(ctypes.c_char), S, ctypes.c_uint8, P)
    CHUNK = ctypes.CFUNCTYPE(I, P, ctypes.c_uint8, ctypes.c_int32,
                             ctypes.POINTER(ctypes.c_char), S, P)
    lib.nghttp2_session_mem_recv.restype = SS
    lib.nghttp2_session_mem_recv.argtypes = [P, ctypes.c_char_p, S]
    lib.nghttp2_session_mem_send.restype = SS
    lib.nghttp2_session_mem_send.argtypes = [P, ctypes.POINTER(P)]
    lib.nghttp2_submit_response.argtypes = [P, ctypes.c_int32, ctypes.POINTER(Nv), S,
                                            ctypes.POINTER(DataProvider)]
    lib.nghttp2_submit_trailer.argtypes = [P, ctypes.c_int32, ctypes.POINTER(Nv), S]
    for name in ("set_on_frame_recv_callback", "set_on_header_callback",
                 "set_on_data_chunk_recv_callback"):
        getattr(lib, "nghttp2_session_callbacks_" + name).argtypes = [P, P]

    def nvs(pairs):
        return (Nv * len(pairs))(*(Nv(k, v, len(k), len(v), 0) for k, v in pairs))

    head = nvs([(b":status", b"200"), (b"content-type", b"application/grpc")])
    trailer = nvs([(b"grpc-status", b"0")])

    answers = {}  # (session, stream id) -> the framed answer still to send

    def read(session, sid, buf, length, flags, source, user):
        data = answers.pop((session, sid))
        if len(data) > length:
            answers[(session, sid)] = data[length:]
            data = data[:length]
        else:
            flags[0] = 1 | 2  # EOF, NO_END_STREAM: the trailer, queued now, ends the stream
            lib.nghttp2_submit_trailer(session, sid, trailer, 1)
        ctypes.memmove(buf, data, len(data))
        return len(data)

    c_read = READ(read)
    provider = DataProvider(None, c_read)

    class NgH2(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.headers, self.body = transport, {}, {}
            cbs = P()
            lib.nghttp2_session_callbacks_new(ctypes.byref(cbs))
            self.keep = (FRAME(self.on_frame), HEADER(self.on_header), CHUNK(self.on_chunk))
            lib.nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, self.keep[0])
            lib.nghttp2_session_callbacks_set_on_header_callback(cbs, self.keep[1])
            lib.nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, self.keep[2])
            self.session = P()
            lib.nghttp2_session_server_new(ctypes.byref(self.session), cbs, None)
            lib.nghttp2_session_callbacks_del(cbs)
            lib.nghttp2_submit_settings(self.session, 0, None, 0)
            self.flush()

        def on_header(self, session, frame, name, namelen, value, valuelen, flags, user):
            sid = frame[0].stream_id
            self.headers.setdefault(sid, []).append(
                (ctypes.string_at(name, namelen), ctypes.string_at(value, valuelen))
            )
            return 0

        def on_chunk(self, session, flags, sid, data, length, user):
            self.body[sid] = self.body.get(sid, b"") + ctypes.string_at(data, length)
            return 0

        def on_frame(self, session, frame, user):
            hd = frame[0]
            if hd.type in (0, 1) and hd.flags & 1:  # DATA or HEADERS ending the request
                self.headers.pop(hd.stream_id, None)
                body = self.body.pop(hd.stream_id, b"")
                if design == "nghttp2-echo":
                    answers[(session, hd.stream_id)] = framed
                    lib.nghttp2_submit_response(session, hd.stream_id, head, 2, provider)
                else:
                    asyncio.get_running_loop().create_task(self.infer(hd.stream_id, body))
            return 0

        async def infer(self, sid, body):
            request = pb.ModelInferRequest.FromString(body[5:])

            async def read_request():
                return request

            call = await core.serve_async(
                GRPC, request.model_name, request.model_version or None, read_request
            )
            if self.session is None:  # the client left meanwhile
                return
            if call.failure is not None:
                sys.exit(call.failure.message)
            answer = call.body.SerializeToString()
            answers[(self.session.value, sid)] = (
                b"\0" + len(answer).to_bytes(4, "big") + answer
            )
            lib.nghttp2_submit_response(self.session, sid, head, 2, provider)
            self.flush()

        def data_received(self, data):
            if lib.nghttp2_session_mem_recv(self.session, data, len(data)) < 0:
                self.transport.close()
                return
            self.flush()

        def flush(self):
            out, ptr = [], P()
            while (n := lib.nghttp2_session_mem_send(self.session, ctypes.byref(ptr))) > 0:
                out.append(ctypes.string_at(ptr, n))
            if out:
                self.transport.write(b"".join(out))

        def connection_lost(self, exc):
            lib.nghttp2_session_del(self.session)
            self.session = None

    async def main():
        loop = asyncio.get_running_loop()
        await loop.create_server(NgH2, "127.0.0.1", port)
        print("ready", flush=True)
        await asyncio.sleep(3600)

    uvloop.install()
    asyncio.run(main())
else:
    from serve.grpc.server import GrpcServer
    server = GrpcServer(core, worker.admin, "127.0.0.1", port, int(design.split(":")[1]))
    server.start()
    print("ready", flush=True)
    time.sleep(3600)
"""


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _serving(design: str, scratch: Path, env: dict[str, str]) -> Iterator[tuple[int, str]]:
    """Start `design`; yield the pid whose CPU is measured and the base URL.

    `server:http` and `server:grpc` are `tapeserve serve` itself (one worker, 8 threads): its
    HTTP binary path driven by wrk, or its gRPC port by h2load; the worker's CPU is measured.
    The others are a bare process serving ModelInfer alone (the SERVE script)."""
    name, _, preset = design.partition("@")
    env = {**env, **PRESETS.get(preset, {})}
    if name.startswith("server:"):
        server = start_server(scratch / "repo", workers=1, threads=8, env=env,
                              extra_args=["--log-level", "warning"])  # fmt: skip
        try:
            children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
            (worker,) = children.read_text().split()
            url = server.url if name == "server:http" else f"http://127.0.0.1:{server.grpc_port}"
            yield int(worker), url
        finally:
            server.stop()
        return
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE, name, str(scratch / "repo"), str(port)],
        stdout=subprocess.PIPE, env=env, text=True, cwd=scratch,
    )  # fmt: skip
    try:
        if process.stdout.readline().strip() != "ready":
            sys.exit(f"{design} did not start")
        yield process.pid, f"http://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--designs", default="server:http,server:grpc,pool:8,aio")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="cnn", choices=("cnn", "mlp"))
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="tapeserve-grpc-designs-"))
    onnx.save(build_model(args.model), scratch / "model.onnx")
    write_repository(scratch / "repo", {args.model: scratch / "model.onnx"}, 64)
    body = scratch / "body.bin"
    body.write_bytes(grpc_body(f"{args.model}_batch", sample(args.model)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPESERVE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    rows: dict[tuple[str, int], list[dict]] = {}
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    designs = args.designs.split(",")
    bin_body, bin_headers = v2_body(sample(args.model), True)
    (scratch / "body.v2").write_bytes(bin_body)
    for round_ in range(args.rounds):
        for design in designs if round_ % 2 == 0 else list(reversed(designs)):
            with _serving(design, scratch, env) as (pid, url):
                for connections in (1, 64):
                    if design.startswith("server:http"):
                        url_ = f"{url}/v2/models/{args.model}_batch/infer"

                        def drive(seconds: float, c: int = connections, u: str = url_) -> dict:
                            return run_wrk(u, scratch / "body.v2", bin_headers, c, seconds)
                    else:

                        def drive(seconds: float, c: int = connections, u: str = url) -> dict:
                            return run_h2load(f"{u}{GRPC_PATH}", body, c, seconds, scratch)

                    drive(1)
                    before = _cpu_seconds(pid)
                    result = drive(args.duration)
                    calls = max(1, result["requests"])
                    result["cpu_us"] = (_cpu_seconds(pid) - before) / calls * 1e6
                    rows.setdefault((design, connections), []).append(result)
                    print(
                        f"round {round_ + 1} {design:16s} c={connections:<3d} "
                        f"{result['rps']:7.0f} calls/s  p50 {result['p50_ms']:6.2f} ms  "
                        f"CPU {result['cpu_us']:5.0f} us/call  errors {result['errors']}",
                        flush=True,
                    )
    print(
        f"\n{args.model}, one worker (intra-op threads 2), h2load/wrk 1 thread, median of "
        f"{args.rounds} alternating {args.duration:g} s rounds; load average now "
        f"{os.getloadavg()[0]:.1f}\n"
    )
    print("| design | c | calls/s | p50 ms | CPU us/call |")
    print("|---|---|---|---|---|")
    for (design, connections), results in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(
            f"| {design} | {connections} | {statistics.median(r['rps'] for r in results):,.0f} | "
            f"{statistics.median(r['p50_ms'] for r in results):.2f} | "
            f"{statistics.median(r['cpu_us'] for r in results):,.0f} |"
        )


if __name__ == "__main__":
    main()
