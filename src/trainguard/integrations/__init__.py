"""Framework adapters over ``trainguard.guard.Guard``, one module per framework.

Each module imports only its own framework (``trainguard.integrations.hf`` needs
``transformers``, ``trainguard.integrations.lightning`` needs ``lightning``), so this
package imports nothing heavy and adding a framework is adding a file. The adapters hold
no check logic: they find the model, the real optimizer, the scheduler and the dataloader
inside the framework's wrappers, start a ``Guard`` on them, call ``guard.step()`` once per
optimizer step and close it at the end.
"""

from __future__ import annotations

__all__: list[str] = []
