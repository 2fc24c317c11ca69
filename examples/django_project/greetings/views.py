from __future__ import annotations

import os

from django.http import HttpRequest, JsonResponse

from greetings.services import GREET, broker
from redis_rpc.errors import RedisRPCError, RequestTimeoutError

# Well below gunicorn's worker timeout (30 s), so that a slow service fails
# the request with a 504 rather than getting the worker killed.
RPC_TIMEOUT = 5.0


def greet(request: HttpRequest, name: str) -> JsonResponse:
    try:
        reply = broker.request(name, list=GREET, timeout=RPC_TIMEOUT)
    except RequestTimeoutError:
        return JsonResponse(
            {"error": "The greeting service did not answer in time."}, status=504
        )
    except RedisRPCError as exc:  # Redis unreachable, or the handler raised
        return JsonResponse({"error": str(exc)}, status=502)
    # The worker's pid shows which gunicorn worker answered.
    return JsonResponse({"greeting": reply.decode(), "pid": os.getpid()})
