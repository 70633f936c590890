"""Stream tokens from a bundle as they are generated (e.g. for an interactive front end).

    python examples/stream_chat.py smollm2-h100.fdpp "Tell me about the Moon." --stop "\n\n"
"""

from __future__ import annotations

import argparse
import sys

import fdpp


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--stop", action="append", default=[], help="a string that ends the answer")
    args = parser.parse_args()
    model = fdpp.load(args.bundle)
    stops = [s.encode().decode("unicode_escape") for s in args.stop]
    sys.stdout.write(args.prompt)
    for event in model.stream(args.prompt, args.max_new_tokens, stop=stops):
        sys.stdout.write(event.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
