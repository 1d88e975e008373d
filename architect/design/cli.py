"""``python -m architect design requirements.yaml [--out doc.md] [--profile P | --profile-from capacity.json]``

Writes the architecture document (stdout without ``--out``) and prints a one-line summary to
stderr. ``--profile-from bench-results/capacity.json`` sizes from a fresh ``benchmarks capacity``
run instead of the committed reference profile; ``--write-profile PATH`` saves that profile (and
needs no requirements file). Exit codes: 0 written, 1 written but no serving mode meets every
target (the document says why), 2 bad input (the message names the field).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from architect.design import plan, profile, render
    from architect.design.requirements import RequirementsError, load

    parser = argparse.ArgumentParser(prog="python -m architect design", description=__doc__.split("\n\n")[0])
    parser.add_argument("requirements", nargs="?", type=Path, help="requirements YAML (docs/designs/*.yaml)")
    parser.add_argument("--out", type=Path, help="write the Markdown document here (default: stdout)")
    parser.add_argument("--profile", type=Path, default=profile.REFERENCE, help="measured profile JSON")
    parser.add_argument("--profile-from", type=Path, help="build the profile from a benchmarks capacity JSON")
    parser.add_argument("--write-profile", type=Path, help="save the profile built with --profile-from here")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    req = None
    if args.requirements is not None:
        try:
            req = load(args.requirements)  # schema errors first: they need no profile
        except RequirementsError as exc:
            print(f"{args.requirements}: invalid requirements:\n{exc}", file=sys.stderr)
            return 2
    try:
        prof = profile.build(args.profile_from) if args.profile_from else profile.load(args.profile)
    except (OSError, KeyError, ValueError) as exc:
        print(f"profile: cannot read {args.profile_from or args.profile}: {exc!r}", file=sys.stderr)
        return 2
    if args.write_profile:
        profile.write(prof, args.write_profile)
        print(f"wrote {args.write_profile}", file=sys.stderr)
        if args.requirements is None:
            return 0
    if args.requirements is None:
        parser.print_usage(sys.stderr)
        print("python -m architect design: error: the requirements file is required", file=sys.stderr)
        return 2
    try:
        design = plan.make(req, prof)
    except RequirementsError as exc:
        print(f"{args.requirements}: invalid requirements:\n{exc}", file=sys.stderr)
        return 2
    text = render.render(design)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    sizes = ", ".join(f"{s.name} x{s.replicas}" for s in design.services)
    print(f"{design.req.name}: {design.mode}, {design.index.name}, {sizes}, Redis {design.redis.shape}, "
          f"{design.total_cores:.1f} cores" + (f" -> {args.out}" if args.out else ""), file=sys.stderr)
    return 1 if any(w.startswith("No serving mode") for w in design.warnings) else 0
