"""``python -m flamepy.runner``: the Runner smoke test (see :mod:`flamepy.runner.e2e`)."""

import sys

from flamepy.runner.e2e import main

sys.exit(main())
