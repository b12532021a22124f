"""Reproducible experiments: each module has a ``Config`` dataclass and
``run(config, out=None, force=False, progress=False) -> Path`` writing a run folder."""

EXPERIMENTS = {
    "teacher-student": "dropdyn.experiments.teacher_student",
    "convergence": "dropdyn.experiments.convergence",
    "convergence-width": "dropdyn.experiments.convergence_width",
    "phase-sweep": "dropdyn.experiments.phase_sweep",
    "phase-cell": "dropdyn.experiments.phase_cell",
    "mnist-binary": "dropdyn.experiments.mnist_binary",
    "sharpness": "dropdyn.experiments.sharpness",
    "srivastava": "dropdyn.experiments.srivastava",
    "alignment": "dropdyn.experiments.alignment",
    "sme-trajectories": "dropdyn.experiments.sme_trajectories",
    "sme-order": "dropdyn.experiments.sme_order",
    "sme-generalisation": "dropdyn.experiments.sme_generalisation",
}
