"""Locate an expression with the real models (downloads weights on first use).

    python examples/locate.py examples/images/snow.png "the long snowboard to the right of the skis"
    python examples/locate.py IMAGE "EXPRESSION" --strategy sfa+crs --detector /models/mm_gdino_tiny
"""

import argparse

from agent import Agent
from tools.drawing import draw_detections
from tools.images import load_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image")
    parser.add_argument("expression")
    parser.add_argument("--strategy", default="sfa", help="specialist, mllm, sfa, crs or sfa+crs")
    parser.add_argument("--detector", help="Grounding DINO Hub id or folder (default: MM-GDINO-L)")
    parser.add_argument("--mllm", help="Qwen VL Hub id or folder (default: Qwen2-VL-7B-Instruct)")
    parser.add_argument("--save", default="located.png", help="where to draw the result")
    args = parser.parse_args()

    # Strings name checkpoints (Hub ids or folders); None keeps the default.
    agent = Agent(strategy=args.strategy, detector=args.detector, mllm=args.mllm)
    image = load_image(args.image)
    result = agent.locate(image, args.expression)
    print(f"target: {result.target!r}  level: {result.level}  path: {result.path}")
    for box, score in zip(result.boxes, result.scores):
        print(f"  box {[round(v, 1) for v in box]}  score {score:.3f}")
    print("timings (s):", {name: round(seconds, 3) for name, seconds in result.timings.items()})
    draw_detections(image, result.detections).save(args.save)
    print(f"saved {args.save}")


if __name__ == "__main__":
    main()
