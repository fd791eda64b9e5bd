"""examples/ipc_integration_demo.py: the seven scenarios on a hub with real workers."""

import subprocess
import sys

from conftest import ROOT, qnllm_bin


def test_the_demo_passes_all_seven_scenarios():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "ipc_integration_demo.py"), "--port", "0", "--qnllm-bin", qnllm_bin()],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for i in range(1, 8):
        assert f"[{i}/7] PASS" in out.stdout
    assert out.stdout.rstrip().endswith("7/7 scenarios passed")
