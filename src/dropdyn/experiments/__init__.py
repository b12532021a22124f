"""Reproducible experiments: each module has a ``Config`` dataclass and
``run(config, out=None, force=False, progress=False) -> Path`` writing a run folder."""

EXPERIMENTS = {
    "teacher-student": "dropdyn.experiments.teacher_student",
    "convergence": "dropdyn.experiments.convergence",
    "phase-sweep": "dropdyn.experiments.phase_sweep",
    "mnist-binary": "dropdyn.experiments.mnist_binary",
    "sharpness": "dropdyn.experiments.sharpness",
    "srivastava": "dropdyn.experiments.srivastava",
    "alignment": "dropdyn.experiments.alignment",
}
