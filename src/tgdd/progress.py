"""Progress bars for long steps: tqdm, shown only while the ``tgdd`` logger reports INFO.

A bar is INFO-level output, so `tgdd -q` (log level WARNING) hides the bars with the log lines,
with no switch of its own to pass down through every step.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def bar(iterable: Iterable[Any] | None = None, *, show: bool = True, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled where the caller asks (``show``) or the log is quieter than INFO."""
    visible = show and logging.getLogger("tgdd").isEnabledFor(logging.INFO)
    return tqdm(iterable, disable=not visible, **kwargs)
