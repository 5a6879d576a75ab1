"""The embedded LLM server: llama.cpp from the `xllamacpp` wheel, OpenAI-compatible, on loopback.

Run as its own process (`python -m kb.llm_server …`) so `kb up` and the tests can start and stop it
like any server a user would run.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path


def serve(model: Path, host: str, port: int, alias: str, n_ctx: int, threads: int, parallel: int) -> None:
    import xllamacpp as xlc

    params = xlc.CommonParams()
    params.model.path = str(model)
    params.model_alias = {alias}
    params.hostnames = [host]
    params.port = port
    # llama.cpp splits n_ctx across the parallel slots; every request must get the whole window.
    params.n_ctx = n_ctx * parallel
    params.n_parallel = parallel
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.use_jinja = True  # the GGUF's own chat template (Qwen's, with tool definitions)
    params.endpoint_metrics = True
    params.warmup = True
    server = xlc.Server(params)
    print(f"llm server listening on {server.listening_address} serving {alias}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    del server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--alias", default="default")
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args()
    serve(args.model, args.host, args.port, args.alias, args.ctx, args.threads, args.parallel)


if __name__ == "__main__":
    main()
