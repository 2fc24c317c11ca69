"""``python -m redis_rpc``: the ``redis-rpc`` command, for where the script is not on PATH."""

from __future__ import annotations

import sys

from redis_rpc._cli.command import main

if __name__ == "__main__":
    sys.exit(main())
