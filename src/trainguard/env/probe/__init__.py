"""The half of ``trainguard env`` that runs inside the interpreter being checked.

``trainguard.env.spawn`` starts it as ``python -I -S`` and loads this folder by file
location under a private name, so no ``.pth`` line, ``sitecustomize``, site-packages
module or ``trainguard/__init__`` runs before or inside it: the checker must not run the
start-up code it is checking. Rules for every module here: standard library only,
relative imports only, Python 3.10 APIs, no output except the JSON answer on stdout and
progress lines on stderr.
"""
