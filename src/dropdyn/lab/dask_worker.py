"""What dropdyn's Dask LocalCluster installs in its workers (imported with Dask only)."""

import signal

from distributed import WorkerPlugin


class IgnoreInterrupt(WorkerPlugin):
    """The workers share the driver's terminal, so a Ctrl-C reaches them too: it is the
    driver's to handle (it closes the cluster), as for the process pool's workers
    (``sweep._worker_init``). ``setup`` runs on the worker's event loop, in its main thread."""

    name = "dropdyn-ignore-interrupt"

    def setup(self, worker) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
