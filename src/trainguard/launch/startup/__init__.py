"""Start-up files that ``trainguard run`` copies into a folder it owns and puts first on
the job's ``PYTHONPATH``. Never imported from here: ``sitecustomize.py`` only acts when
Python imports it under that name at start-up."""
