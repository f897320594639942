"""The bare endpoint: the same server stack as ``serving.app`` (FastAPI + uvicorn, started with exactly the
same command line by ``bench.common.start_api``), answering ``POST /v1/decide`` with a constant JSON body of
the size of a real answer. What is left when personalisation costs nothing: the HTTP floor.

``POST /v1/decide`` is answered the way ``serving.app`` answers it: by an ASGI wrapper in front of the FastAPI app
routing (``serving.decide.DecideFastPath`` there, :class:`BareFastPath` here: the same body reading and response
messages, ``serving.asgi``), so the ratio compares the work of a decision, not two ways of routing a request."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from serving.asgi import is_decide, read_body, send_json

router = APIRouter()

ANSWER = orjson.dumps({
    "decision_id": "0" * 32,
    "placement": "product_recs",
    "actions": [
        {"action_id": f"act-shoes-{i}", "score": 1.234567, "title": f"Shoes pick {i}", "category": "shoes",
         "payload": {"image": f"https://cdn.shop.example/shoes/{i}.jpg", "url": f"https://shop.example/shoes/{i}"}}
        for i in range(5)
    ],
    "policy": "affinity_popularity", "model_version": "1", "personalised": True, "degraded": False,
})


@router.post("/v1/decide")
async def decide(request: Request) -> Response:
    await request.body()  # read the body, as the real handler does
    return Response(ANSWER, media_type="application/json")


@router.get("/readyz")
async def readyz() -> Response:
    return Response(b'{"ready":true}', media_type="application/json")


class BareFastPath:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not is_decide(scope):
            await self.app(scope, receive, send)
            return
        await read_body(receive)
        await send_json(send, 200, ANSWER)


app = BareFastPath(FastAPI(title="bare endpoint (benchmark floor)"))
app.app.include_router(router)

#: the same constant answer through FastAPI's routing (an ``APIRoute`` with a ``Request``): the floor the
#: figures before the decide fast path were compared with, still measured at saturation for continuity
route_app = FastAPI(title="bare endpoint through FastAPI routing")
route_app.include_router(router)
