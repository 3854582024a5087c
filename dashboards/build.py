"""Render the Aftershock dashboards to dashboards/json/<uid>.json.

python dashboards/build.py           # (re)write the JSON
python dashboards/build.py --check   # exit 1 listing stale files, write nothing (CI)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The builders live in a src layout (dashboards/src/aftershock_dashboards) outside the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from aftershock_dashboards import render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if any committed JSON is stale")
    args = parser.parse_args(argv)
    rel = (
        render.JSON_DIR.relative_to(Path.cwd())
        if render.JSON_DIR.is_relative_to(Path.cwd())
        else render.JSON_DIR
    )
    if args.check:
        stale = render.stale_files()
        if stale:
            print("stale dashboard JSON (run: python dashboards/build.py):", file=sys.stderr)
            for name in stale:
                print(f"  {rel / name}", file=sys.stderr)
            return 1
        print(f"dashboards up to date ({len(render.BUILDERS)} in {rel})")
        return 0
    changed = render.write_all()
    for name in changed:
        print(f"{'wrote' if (render.JSON_DIR / name).exists() else 'removed'} {rel / name}")
    if not changed:
        print(f"dashboards up to date ({len(render.BUILDERS)} in {rel})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
