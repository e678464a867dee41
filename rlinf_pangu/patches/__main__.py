"""``python -m rlinf_pangu.patches [--json]``: every patch, its upstream, whether it applies here, and why."""

from __future__ import annotations

import argparse
import json
import sys

from . import describe


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlinf_pangu.patches", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="one JSON object per patch")
    args = p.parse_args(argv)
    rows = describe()
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    width = max(len(r["name"]) for r in rows)
    for upstream in sorted({r["upstream"] for r in rows}):
        sys.stdout.write(f"[{upstream}]\n")
        for r in (r for r in rows if r["upstream"] == upstream):
            sys.stdout.write(f"  {r['name']:<{width}}  {r['state']:<13} {r['when']:<10}  {r['why']}\n")
    failed = [r for r in rows if r["state"].startswith("probe failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
