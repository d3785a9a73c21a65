"""Optional dependencies: what only one stage needs is an extra, named in the error when it is missing.

``pip install diffaudit`` gives the audit itself; ``diffaudit[dp]`` adds Opacus (DP-SGD training, the DP-SGD
bound), ``diffaudit[fid]`` torch-fidelity (the standard Inception FID; without it FID uses the domain extractor),
``diffaudit[multi-gpu]`` accelerate (data-parallel launches), ``diffaudit[monai]`` MONAI with einops (auditing MONAI
models), and ``diffaudit[all]`` all of them. A module imports an
extra inside the function that needs it, right after :func:`require`, so that everything else works without it.
"""

from __future__ import annotations

import importlib.util

from .errors import DiffauditError

#: module -> (the package to install, the extra that installs it)
EXTRAS = {"opacus": ("opacus", "dp"), "torch_fidelity": ("torch-fidelity", "fid"), "accelerate": ("accelerate", "multi-gpu"),
          "monai": ("monai", "monai"), "einops": ("einops", "monai")}


def require(module: str, purpose: str) -> None:
    """Refuse ``purpose`` with the install command when the optional ``module`` is missing.

    >>> require("opacus", "DP-SGD training")  # installed with the [all] extra
    """
    if importlib.util.find_spec(module) is None:
        package, extra = EXTRAS[module]
        raise DiffauditError(f"{purpose} needs the package {package}, which is not installed; install it with "
                             f"pip install 'diffaudit[{extra}]' (or 'diffaudit[all]')")
