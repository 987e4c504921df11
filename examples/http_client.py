"""Ask a running ``agent-cli serve`` where something is, as a robot or annotation tool would.

    agent-cli serve &                      # in another terminal: models load once
    python examples/http_client.py examples/images/snow.png "the long snowboard to the right of the skis"
    python examples/http_client.py IMAGE "EXPRESSION" --url http://gpu-box:8000 --strategy crs --allow-none

The API key, when the server has one, comes from REX_API_KEY. A full queue (503) is
retried after the server's Retry-After.
"""

import argparse
import os
import sys
import time

import httpx


def locate(url: str, image: str, expression: str, retries: int = 3, **options) -> dict:
    """The server's JSON result for ``expression`` in the image file ``image``."""
    headers = {"X-API-Key": os.environ["REX_API_KEY"]} if os.environ.get("REX_API_KEY") else {}
    fields = {"expression": expression, **{name: str(value).lower() if isinstance(value, bool) else value
                                           for name, value in options.items() if value is not None}}
    with open(image, "rb") as file:
        content = file.read()
    for _ in range(retries + 1):
        response = httpx.post(f"{url.rstrip('/')}/locate", data=fields, headers=headers, timeout=300,
                              files={"image": (os.path.basename(image), content)})
        if response.status_code != 503:
            break
        time.sleep(float(response.headers.get("Retry-After", "1")))
    if response.status_code != 200:
        detail = response.json().get("detail", response.text) if response.content else response.reason_phrase
        raise SystemExit(f"error: {response.status_code}: {detail}")
    return response.json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image")
    parser.add_argument("expression")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default: %(default)s)")
    parser.add_argument("--strategy", help="specialist, mllm, sfa, crs or sfa+crs (default: the server's)")
    parser.add_argument("--allow-none", action="store_true", default=None, help="the target may be absent")
    parser.add_argument("--multi", action="store_true", default=None, help="several targets may be returned")
    args = parser.parse_args()
    try:
        result = locate(args.url, args.image, args.expression, strategy=args.strategy, allow_none=args.allow_none,
                        multi=args.multi)
    except (OSError, httpx.HTTPError) as error:
        sys.exit(f"error: {error}")
    print(f"path: {result['path']}  level: {result['level']}  target: {result['target']!r}")
    for box, score in zip(result["boxes"], result["scores"]):
        print(f"  box {[round(v, 1) for v in box]}  score {score:.3f}")
    if not result["boxes"]:
        print("  no target")


if __name__ == "__main__":
    main()
