"""``runtime.monkeypatch``: the training code that runs is still the code that was verified.

An optimizer whose ``step`` was swapped, a ``gelu`` that quietly scales, a hook that
rescales a gradient: every one of them is "make the step run other code". The check, one
idea per module:

* ``snapshot``: at ``attach`` it records what each watched name points to (``torch``,
  ``torch.nn.functional``, ``torch.nn.utils``, ``torch._C._nn``, ``torch.Tensor``,
  torch.optim, torch.nn.modules, torch.utils.data, the model's, optimizer's and
  schedulers' classes and instances), the state of every Python function behind those
  names (code, defaults, the callables its closure holds) and every hook container;
* ``watch``: every optimizer step compares, by identity, everything the step can reach
  (tens of microseconds), so a patch is caught at the step it is made, and restoring it
  before a snapshot hides nothing; the full comparison (code objects, closures, defaults,
  every other name) runs on a schedule keyed by the run key, ``every`` steps apart on
  average, that the insider cannot predict;
* ``compare``: classifies each difference and absorbs it into the baseline;
* ``hooks``: hooks present at attach are judged, not adopted: verified library code and
  the job's entry script are events, anything else an alert; hooks on autograd nodes
  cannot be listed in this torch (a ``code.unenumerable`` event says so);
* ``origin``: whether code is "library code" is decided by what was loaded from which
  file and what that file holds now (and by the environment seal, when
  ``$TRAINGUARD_ENV_SEAL`` names one), never by the path the code claims;
* ``disk``: at attach every torch name must run torch's own verified code (a patch made
  before the guard started), and a background thread compares every watched function
  with its source file (a patched ``.pyc``).

Not alarms, because torch and the libraries around it do them honestly: torch rewraps
lazily (``Optimizer.step`` gets its hook wrapper when the first optimizer of a class is
built, an LR scheduler wraps ``optimizer.step`` on the instance, dynamo wraps
``torch.manual_seed`` and every optimizer's ``_init_group``, ``model.compile()`` sets
``_compiled_call_impl``). Such a replacement is accepted when the new function is made by
torch's own code (verified against its source) and wraps what stood there before and
nothing but known code. A brand-new name shadows nothing and changes no existing call
(transformers adds ``nn.Module.smart_apply``). Hooks of verified library code
(transformers' ``enable_input_require_grads``) are recorded, not alarmed. trainguard's
own wrappers are known through the registry in ``_codehash``, its hooks by being bound to
the guard or a check, or by being trainguard's verified code. Every acceptance is a
``code.accepted`` event in the ledger, and so is every change taken as the new baseline
when a ``guard.authorized()`` block ends.

*What it trusts:* the objects the guard is given, what ``sys.modules`` says was loaded
from which file, the interpreter's compiler, the run key's secrecy (the schedule), and the
environment seal when one is named. What it cannot see: hooks on autograd nodes, and a
patch made and undone entirely inside one forward/backward pass between two reads of the
watch (the update checks judge what such a patch does to the step).
"""

from __future__ import annotations

from trainguard.guard.checks.code.check import CodeCheck

__all__ = ["CodeCheck"]
