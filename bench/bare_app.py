"""The baseline of bench/api.py: a bare FastAPI endpoint that returns a constant JSON.

It is served the way ``bananastand serve`` serves the real app (``uvicorn.run`` in one
process, uvicorn's ``auto`` event loop and HTTP implementation from the same environment,
no access log, logging at WARNING), so what the benchmark compares is our code, not the
server around it.

    python bench/bare_app.py --port 8001     # then: curl localhost:8001/bare
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import uvicorn
from fastapi import FastAPI

BODY: dict[str, Any] = {"code": 200, "msg": "success", "data": {"ok": True}}

app = FastAPI()


@app.get("/bare")
async def bare() -> dict[str, Any]:
    return BODY


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # The same arguments bananastand.cli.serve passes (its access log is off in the bench).
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
