"""scripts/gpu_session.sh, the one call a GPU session gets: its stages in order, each skipped
(and said so) when the deadline leaves it less than its minimum. (Its stages themselves were
rehearsed with DEVICE=cpu: docs/development.md, "On a GPU machine".)"""

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_session.sh"


def test_stages_past_the_deadline_are_skipped_and_said_so(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "INSTALL": "0", "DEADLINE": "0", "DEVICE": "cpu",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(SCRIPT), "check", "bogus", "vgg"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "out" / "session.txt").read_text().splitlines()
    assert re.fullmatch(r"setup: \d+ s", lines[0])
    assert re.fullmatch(r"check: skipped \(-?\d+ s left before the deadline, needs 60\)", lines[1])
    assert lines[2] == "bogus: unknown stage (check bench vgg-parts sme width convergence tiles vgg)"
    assert re.fullmatch(r"vgg: skipped \(-?\d+ s left before the deadline, needs 120\)", lines[3])
    assert re.fullmatch(r"session: \d+ s", lines[4]) and len(lines) == 5
    assert not (tmp_path / "out" / "check.log").exists()
