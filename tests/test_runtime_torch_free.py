"""fewstep.runtime imports and samples with torch, diffusers and transformers unimportable."""

from __future__ import annotations

import subprocess
import sys

BLOCK = "import sys; [sys.modules.__setitem__(m, None) for m in ('torch', 'diffusers', 'transformers')]\n"


def test_runtime_imports_and_samples_without_torch():
    code = BLOCK + (
        "import numpy as np\n"
        "import fewstep.runtime as rt\n"
        "noise = rt.seeded_noise_np([0, 1], (1, 2, 2))\n"
        "out = rt.euler_np(lambda x, t, c: x - 0.5, noise, np.array([1.0, 0.0]), {})\n"
        "assert np.allclose(out, 0.5)\n"  # v = x - 0.5 is straight to 0.5 in one step from t = 1
        "assert 'torch' not in {m for m, v in sys.modules.items() if v is not None}\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
