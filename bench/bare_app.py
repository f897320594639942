"""The bare endpoint: the same server stack as ``serving.app`` (FastAPI + uvicorn, started with exactly the
same command line by ``bench.common.start_api``), answering ``POST /v1/decide`` with a constant JSON body of
the size of a real answer. What is left when personalisation costs nothing: the HTTP floor."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

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


app = FastAPI(title="bare endpoint (benchmark floor)")
app.include_router(router)
