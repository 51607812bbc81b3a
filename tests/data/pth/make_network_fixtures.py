"""Regenerate the official-format network checkpoints used by tests/test_pretrained.py.

Needs real PyTorch (only for regenerating; the tests never import torch). From the repo root:

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 numpy
    /tmp/torchenv/bin/python tests/data/pth/make_network_fixtures.py

Writes, from the reference weights in tests/data/reference:
* dns_fg_student_ref.pth -- {'model': state_dict, 'optimizer': {}, 'global_step': 3,
  'args': argparse.Namespace(...)} laid out like the official DnS training checkpoints (zip format),
  holding the weights of the FG student without indexing layer (fg_none_student.npz).
* visil_f512_ref_legacy.pth -- a bare ViSiL head state dict (visil_head_f512.npz) in the legacy
  (non-zip) torch format, like the older published files.
"""
import argparse
import os
import sys
from collections import OrderedDict

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
from reference import Reference  # noqa: E402


def as_state_dict(ref):
    return OrderedDict((k, torch.from_numpy(v.copy())) for k, v in sorted(ref.state.items()))


def main():
    fg = as_state_dict(Reference("fg_none_student"))
    args = argparse.Namespace(student_type="fine-grained", lr=1e-4, batch_sz=64, teacher="teacher")
    torch.save({"model": fg, "optimizer": {}, "global_step": 3, "args": args},
               os.path.join(HERE, "dns_fg_student_ref.pth"))
    visil = as_state_dict(Reference("visil_head_f512"))
    torch.save(visil, os.path.join(HERE, "visil_f512_ref_legacy.pth"), _use_new_zipfile_serialization=False)


if __name__ == "__main__":
    main()
