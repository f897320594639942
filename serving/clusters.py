"""``GET /v1/admin/clusters``: each behavioural cluster described (engine/clusters.py): its size and share of
recent profiles, mean monetary value, strongest categories and activity profile, and the segment id
(``cluster:<k>``) audiences name it by."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from serving import auth
from serving.services import Services

#: every route here is the admin's (routes added later included)
router = APIRouter(dependencies=[auth.require(auth.ADMIN)])


@router.get("/v1/admin/clusters", summary="The behavioural clusters: size, value, top categories")
async def clusters(request: Request) -> Response:
    svc: Services = request.app.state.services
    settings = svc.config.clusters
    loaded = svc.models.clusters()
    body = {"enabled": settings.enabled, "k": settings.k, "feature": settings.feature,
            "model_version": loaded[1] if loaded else 0,
            "profiles_learned": loaded[0].n_updates if loaded else 0,
            "clusters": loaded[0].describe() if loaded else []}
    return Response(orjson.dumps(body), media_type="application/json")
