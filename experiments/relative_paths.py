# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""Commands as they are recorded in committed results: relative to the repository root, so that a record made
in one checkout reads the same, and reruns, in any clone."""

import os
from typing import List, Sequence


def relative_to_repo(command: Sequence[str], repo_root: str) -> List[str]:
    """Each argument that is an absolute path inside ``repo_root`` becomes relative to it; an interpreter
    outside the checkout is recorded by its name only (``python3``)."""
    root = os.path.abspath(repo_root)
    recorded = []
    for i, arg in enumerate(command):
        if os.path.isabs(arg) and os.path.commonpath([root, os.path.abspath(arg)]) == root:
            arg = os.path.relpath(arg, root)
        elif i == 0 and os.path.isabs(arg):
            arg = os.path.basename(arg)
        recorded.append(arg)
    return recorded
