"""Built-in knowledge of globals: what is safe, per ecosystem, and what is known to run code.

What the policy trusts, all of it in this package and reviewed like code:

- ``BUILTIN_ALLOW``: exact ``module.qualname`` entries, each with the uses it is allowed
  (``ref``, ``new``, ``call``) and a reason. An entry allowing ``call`` was read and builds a
  value from its arguments whatever they are; one module per ecosystem (``_stdlib``,
  ``_torch``, ``_numpy``, ``_sklearn``, ``_pandas``, ``_huggingface``).
- Wildcards (``sklearn.*``): limited to ``ref`` and ``new``, never calls, and matching only
  names in the generated class table (``_classes``): classes each package defines, not what
  its modules import from elsewhere, never an attribute path or a re-exported module
  (``torch.nn.modules.linear.F``).
- The dangerous rules (``_danger``): modules, exact names and attribute names that reach code
  execution, files, processes or sockets. No entry, built-in or user, overrides them; only
  the ``HARMLESS_MEMBERS`` of a dangerous module escape the whole-module rule.

Dangerous knowledge only raises severity; anything not allowed is reported either way.
"""

from __future__ import annotations

from trainguard.scan.allowlists import _huggingface, _numpy, _pandas, _sklearn, _torch
from trainguard.scan.allowlists._base import BUILTIN_ALLOW
from trainguard.scan.allowlists._classes import defines
from trainguard.scan.allowlists._danger import (
    DANGEROUS_ATTRS,
    DANGEROUS_EXACT,
    DANGEROUS_MODULES,
    LOADER_FUNCTIONS,
)
from trainguard.scan.allowlists._stdlib import ALIASES, HARMLESS_MEMBERS

__all__ = [
    "ALIASES",
    "BUILTIN_ALLOW",
    "DANGEROUS_ATTRS",
    "DANGEROUS_EXACT",
    "DANGEROUS_MODULES",
    "HARMLESS_MEMBERS",
    "LOADER_FUNCTIONS",
    "defines",
]

del _huggingface, _numpy, _pandas, _sklearn, _torch  # imported for their entries
