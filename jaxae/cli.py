"""What the scripts share: turn UsageError into one line and exit status 2, TrainingStopped into one line and
exit status 1."""

from __future__ import annotations

import sys
from typing import Callable

from jaxae.config import TrainingStopped, UsageError


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    try:
        code = main(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except TrainingStopped as e:
        print(f"error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
