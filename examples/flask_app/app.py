"""A Flask app whose view calls the greeting service over Redis.

Run it under gunicorn with ``gunicorn -c gunicorn.conf.py app:app``, or for
development with ``flask --app app run``.
"""

from __future__ import annotations

import os

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from rpc import GREET, broker

from redis_rpc.errors import RedisRPCError, RequestTimeoutError

# Well below gunicorn's worker timeout (30 s), so that a slow service fails
# the request with a 504 rather than getting the worker killed.
RPC_TIMEOUT = 5.0

app = Flask(__name__)


@app.get("/greet/<name>")
def greet(name: str) -> ResponseReturnValue:
    try:
        reply = broker.request(name, list=GREET, timeout=RPC_TIMEOUT)
    except RequestTimeoutError:
        return jsonify(error="The greeting service did not answer in time."), 504
    except RedisRPCError as exc:  # Redis unreachable, or the handler raised
        return jsonify(error=str(exc)), 502
    # The worker's pid shows which gunicorn worker answered.
    return jsonify(greeting=reply.decode(), pid=os.getpid())
