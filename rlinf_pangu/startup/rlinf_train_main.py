"""``rlinf.train``, provided by rlinf-pangu while RLinf ships none (see rlinf_pangu.startup.rlinf_train).

Runs :func:`rlinf_pangu.train.main`: ``python -m rlinf.train --config PATH.yaml [key=value ...]``.
"""

import sys

from rlinf_pangu.train import main, parse_args  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
