"""Run many queries with one agent (models load once) and write one JSON line per query.

    python examples/batch.py queries.jsonl results.jsonl --strategy crs

``queries.jsonl`` holds objects ``{"image": "path.png", "expression": "..."}``.
"""

import argparse
import json

from agent import Agent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("queries")
    parser.add_argument("results")
    parser.add_argument("--strategy", default="sfa")
    parser.add_argument("--detector")
    parser.add_argument("--mllm")
    parser.add_argument("--llm", help="target extraction: auto, mllm, heuristic or openai:MODEL")
    args = parser.parse_args()

    with open(args.queries, encoding="utf-8") as lines:
        queries = [json.loads(line) for line in lines if line.strip()]
    agent = Agent(strategy=args.strategy, detector=args.detector, mllm=args.mllm, extractor=args.llm)
    results = agent.locate_batch([q["image"] for q in queries], [q["expression"] for q in queries])
    with open(args.results, "w", encoding="utf-8") as out:
        for query, result in zip(queries, results):
            out.write(json.dumps({**query, **result.to_dict()}) + "\n")
    print(f"wrote {len(results)} results to {args.results}")


if __name__ == "__main__":
    main()
