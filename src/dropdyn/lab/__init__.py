"""The lab: everything that runs, stores, indexes, sweeps and reports experiments, and knows
no study. The studies are the modules of :mod:`dropdyn.experiments`, found by the registry
(:func:`dropdyn.lab.experiment.registry`, the one import that points back up).

    experiment   the Experiment declaration, the registry, the runner
    settings     a Config's fields (:func:`setting` and its constraints), config files,
                 :class:`Settings`, :class:`Runtime`
    lifecycle    one run's life: started or claimed → computed → complete or failed
    store        atomic run folders, keys, loading a run back (:func:`dropdyn.load`)
    index        the store's SQLite index (``dropdyn runs``; also ``dropdyn.runs``)
    sweep        sweep files, points, serial / process / Dask executors (``dropdyn.sweep``)
    report       self-contained HTML reports (``dropdyn report``)
    host         threads, live processes and the allocator of the machine a run shares
    dask_worker  what a Dask worker of a sweep installs

To write an experiment: ``from dropdyn.lab import Context, Experiment, Runtime, setting``
and the constraints (``at_least``, ``positive`` …) of :mod:`dropdyn.lab.settings`
(docs/development.md).
"""

from .experiment import Context, Experiment, seeded, sign_verdict, verdict
from .settings import Runtime, setting

__all__ = ["Context", "Experiment", "Runtime", "seeded", "setting", "sign_verdict", "verdict"]
