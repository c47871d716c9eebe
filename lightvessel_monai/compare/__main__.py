"""``python -m lightvessel_monai.compare``: see :mod:`lightvessel_monai.compare.runs`."""

import sys

from lightvessel_monai.compare.runs import main

if __name__ == "__main__":
    sys.exit(main())
