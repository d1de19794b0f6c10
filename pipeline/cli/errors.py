"""Exit codes of ``bneck`` and the usage error that maps to exit 2.

Exit codes (for Makefiles and batch schedulers): 0 done (or already done), 1 error,
2 usage error, 3 too many bad images (chunks kept), 130 interrupted, 143 terminated (resumable).
"""

from __future__ import annotations

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_BAD_IMAGES, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 3, 130, 143


class UsageError(Exception):
    """Flags that argparse alone cannot check together (e.g. ``-o`` without ``--plot``): exit 2."""
