"""A single-process serving peer for `bench.serve_load`: what a team hand-rolls to serve one
classifier, and what single-process CPU servers do. One process, uvicorn + Starlette, an
asyncio queue that gathers up to `--batch` texts (waiting at most `--wait-ms` for more), the
Hugging Face tokenizer and the torch model in fp32 on `--threads` threads.

    python -m bench.peer --model models/demo/classifier --port 8100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any


def build(model_dir: str, batch: int, wait_ms: float, threads: int) -> Any:
    import torch
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    hf_logging.disable_progress_bar()
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    labels = model.config.id2label
    queue: asyncio.Queue[tuple[str, asyncio.Future]] = asyncio.Queue()

    def forward(texts: list[str]) -> list[dict[str, Any]]:
        enc = tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
        with torch.inference_mode():
            probs = model(**enc).logits.softmax(-1)
        score, idx = probs.max(-1)
        return [{"label": labels[int(i)], "score": float(s)} for s, i in zip(score, idx, strict=True)]

    async def batcher() -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await queue.get()]
            deadline = loop.time() + wait_ms / 1000
            while len(items) < batch:
                try:
                    items.append(await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time())))
                except TimeoutError:
                    break
            try:
                results = await asyncio.to_thread(forward, [t for t, _ in items])
                for (_, fut), r in zip(items, results, strict=True):
                    fut.set_result(r)
            except Exception as exc:  # noqa: BLE001 - every waiter gets the error
                for _, fut in items:
                    fut.set_exception(exc)

    async def classify(request: Request) -> JSONResponse:
        texts = (await request.json())["texts"]
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in texts]
        for text, fut in zip(texts, futures, strict=True):
            queue.put_nowait((text, fut))
        return JSONResponse({"results": list(await asyncio.gather(*futures))})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(batcher())
        yield
        task.cancel()

    routes = [Route("/v1/classify", classify, methods=["POST"]), Route("/healthz", healthz)]
    return Starlette(routes=routes, lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--wait-ms", type=float, default=10)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    app = build(a.model, a.batch, a.wait_ms, a.threads)
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
