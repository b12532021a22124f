"""Reproducible experiments. Each module declares one ``EXPERIMENT = Experiment(...)``
(name, ``Config``, ``compute``, ``write``, its theory rows; see ``dropdyn.experiment``) and
is found by scanning this package: adding an experiment is adding one module here."""
