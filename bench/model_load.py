"""Peak memory of loading a model: the weights assigned as the parameters (today) vs copied into a model
built and initialised first (before).

Saves one model of ``--entities`` x ``--dim`` (float32) with :func:`ipinsights.storage.modelfile.save_model`,
then loads it in a fresh process per mode and prints one figure per line: the weights' size, each mode's
peak RSS above the process's RSS just before loading (``VmHWM`` of ``/proc/self/status``), that peak in
units of the weights' size, and the ratio today / before.

    python bench/model_load.py [--entities 2000000] [--dim 128]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from _proc import child_env  # bench/ is on sys.path when run as a script

CHILD = r"""
import sys
from pathlib import Path
from _proc import status_mb as status  # bench/ is on PYTHONPATH (see main)

import torch
from safetensors.torch import load_file
from ipinsights.core.model import IPInsightsModel
from ipinsights.storage import modelfile

path, mode = sys.argv[1], sys.argv[2]
manifest = modelfile.read_manifest(path)  # imports and small reads done before the baseline
base = status("VmRSS")
if mode == "today":
    bundle = modelfile.load_model(path)
else:  # before: a model built (and initialised) first, then the loaded weights copied in
    bundle = modelfile.load_model(path)  # the same checks, then the old way on top of its config
    hp, opts = bundle.hyperparameters, bundle.options
    del bundle
    import gc; gc.collect()
    base = status("VmRSS")
    model = IPInsightsModel(hp, opts)
    model.load_state_dict(load_file(str(Path(path) / modelfile.WEIGHTS)))
print(status("VmHWM") - base)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entities", type=int, default=2_000_000)
    p.add_argument("--dim", type=int, default=128)
    args = p.parse_args()

    from ipinsights.core.config import Hyperparameters, ModelOptions
    from ipinsights.core.model import IPInsightsModel
    from ipinsights.storage.modelfile import save_model

    hp = Hyperparameters(num_entity_vectors=args.entities, vector_dim=args.dim)
    model = IPInsightsModel(hp, ModelOptions())
    weights_mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    with tempfile.TemporaryDirectory(prefix="model-load-") as tmp:
        path = Path(tmp) / "model"
        save_model(model, path)
        del model
        peaks = {}
        for mode in ("before", "today"):
            child = [sys.executable, "-c", CHILD, str(path), mode]
            out = subprocess.run(child, check=True, capture_output=True, text=True, env=child_env())
            peaks[mode] = float(out.stdout.split()[-1])
    print(f"weights_mb={weights_mb:.0f}")
    for mode in ("before", "today"):
        print(f"{mode}_peak_mb={peaks[mode]:.0f}")
        print(f"{mode}_peak_in_weights={peaks[mode] / weights_mb:.2f}")
    print(f"today_vs_before={peaks['today'] / peaks['before']:.2f}")


if __name__ == "__main__":
    main()
