"""``python -m lightvessel_monai.export --bundle bundle --out dist/``: the bundle as a MONAI Model Zoo zip.

See :mod:`lightvessel_monai.export.package` for the layout, how the package is made self-contained, and the checks.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from lightvessel_monai.errors import exit_code_of


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightvessel_monai.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="bundle", help="the bundle folder (configs/, models/model.pt, eval/)")
    parser.add_argument("--out", default="dist", help="the folder the zip is written to (created if absent)")
    parser.add_argument(
        "--config_overlay",
        action="append",
        default=[],
        metavar="FILE",
        help="a data or method overlay merged into the packaged train.json and inference.json (repeatable, in order)",
    )
    parser.add_argument(
        "--meta_overlay", action="append", default=[], metavar="FILE", help="JSON merged into metadata.json"
    )
    parser.add_argument("--name", default=None, help="the package's folder name (default: from metadata's name)")
    parser.add_argument("--checkpoint", default=None, help="the student checkpoint (default: <bundle>/models/model.pt)")
    parser.add_argument("--report_dir", default=None, help="the run's report folder (default: <bundle>/eval)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from lightvessel_monai.export.package import build_package

    return exit_code_of(
        lambda: print(
            build_package(
                args.bundle,
                args.out,
                config_overlays=args.config_overlay,
                meta_overlays=args.meta_overlay,
                name=args.name,
                checkpoint=args.checkpoint,
                report_dir=args.report_dir,
            )
        )
    )


if __name__ == "__main__":
    sys.exit(main())
