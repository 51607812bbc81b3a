"""Regenerate the ``.pth`` fixtures used by ``tests/test_pth.py``.

This script needs real PyTorch and is ONLY for regenerating the committed
fixtures; the test-suite itself never imports torch.  Run it from a
throwaway environment outside the repository, e.g.::

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0 numpy
    /tmp/torchenv/bin/python tests/data/pth/make_fixtures.py

It writes, next to itself:

* ``state_dict_zip.pth`` / ``state_dict_legacy.pth`` -- a bare state dict
  with many dtypes, a 0-d tensor, non-contiguous views, two tensors that
  share one storage at different offsets, an ``nn.Parameter`` (with and
  without Python state), a conj-bit complex tensor and a neg-bit view;
  saved in the zip format and in the legacy (pre-1.6) format.
* ``dns_checkpoint_zip.pth`` / ``dns_checkpoint_legacy.pth`` -- a training
  checkpoint laid out like the official DnS ones: ``{'model': state_dict,
  'optimizer': optimizer.state_dict(), 'global_step': 5,
  'args': argparse.Namespace(...)}``.
* ``itq_like.pth`` -- ``{'proj': float32 tensor}`` like the DnS ITQ file.
* ``parameter.pth`` -- a bare ``nn.Parameter`` as the top-level object.
* ``expected.npz`` -- torch's own values for every tensor above, keyed
  ``<fixture stem>/<name>`` (bfloat16 and float8 widened to float32, conj
  and neg bits resolved), so the tests compare our reader against torch.
"""

import argparse
import os
from collections import OrderedDict

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def _to_numpy(tensor):
    """Torch's own logical value of ``tensor`` as a numpy array."""
    tensor = tensor.detach().resolve_conj().resolve_neg()
    if tensor.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
        tensor = tensor.float()
    return tensor.contiguous().numpy().copy()


def make_state_dict():
    """A bare state dict exercising dtypes, views and shared storages."""
    torch.manual_seed(0)
    shared = torch.arange(10, dtype=torch.float32) * 0.5
    grid = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    param_with_state = torch.nn.Parameter(torch.randn(2, 2))
    param_with_state.note = "kept in Python state"
    complex_base = torch.tensor([1 + 2j, -3 + 0.5j], dtype=torch.complex64)
    sd = OrderedDict()
    sd["float32"] = torch.randn(3, 4)
    sd["float64"] = torch.randn(2, 3, dtype=torch.float64)
    sd["int64"] = torch.tensor([-(2**40), -1, 0, 7, 2**62], dtype=torch.int64)
    sd["int32"] = torch.tensor([-5, 6], dtype=torch.int32)
    sd["int8"] = torch.tensor([-128, 127], dtype=torch.int8)
    sd["uint8"] = torch.tensor([0, 255], dtype=torch.uint8)
    sd["uint16"] = torch.tensor([0, 65535, 3], dtype=torch.uint16)
    sd["float16"] = torch.randn(5).half()
    sd["bool"] = torch.tensor([True, False, True])
    sd["bfloat16"] = torch.randn(2, 3).to(torch.bfloat16)
    sd["float8_e4m3fn"] = torch.randn(4).to(torch.float8_e4m3fn)
    sd["scalar"] = torch.tensor(3.25)
    sd["empty"] = torch.zeros(0, 3)
    sd["transposed"] = grid.t()
    sd["strided"] = grid[:, ::2]
    sd["expanded"] = torch.tensor([1.0, 2.0]).expand(3, 2)
    sd["shared_a"] = shared[2:6]
    sd["shared_b"] = shared[4:].view(2, 3)
    sd["param"] = torch.nn.Parameter(torch.randn(3))
    sd["param_with_state"] = param_with_state
    sd["complex_conj"] = complex_base.conj()
    sd["neg_bit"] = complex_base.clone().conj().imag
    return sd


class TinyStudent(torch.nn.Module):
    """A small module with the kinds of layers a DnS student has."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)
        self.norm = torch.nn.BatchNorm1d(3)
        self.conv = torch.nn.Conv2d(1, 2, kernel_size=2, bias=False)

    def forward(self, x):
        return self.norm(self.proj(x))


def make_checkpoint():
    """A checkpoint shaped like DnS's ``utils.save_model`` output."""
    torch.manual_seed(1)
    model = TinyStudent()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss = model(torch.randn(5, 4)).pow(2).mean()
    loss.backward()
    optimizer.step()
    args = argparse.Namespace(
        lr=1e-4,
        batch_sz=64,
        student_type="fine-grained",
        attention=True,
        dims=512,
        experiment_path="experiments/DnS_students",
        weight_decay=0.0,
        teacher=None,
    )
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "global_step": 5,
        "args": args,
    }


def _flatten(prefix, obj, out):
    """Record every tensor inside ``obj`` under a ``/``-joined key."""
    if isinstance(obj, torch.Tensor):
        out[prefix] = _to_numpy(obj)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _flatten(f"{prefix}/{key}", value, out)
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            _flatten(f"{prefix}/{index}", value, out)


def _save_both(obj, stem, expected):
    """Save ``obj`` in the zip and legacy formats and record its tensors."""
    torch.save(obj, os.path.join(HERE, f"{stem}_zip.pth"))
    torch.save(obj, os.path.join(HERE, f"{stem}_legacy.pth"),
               _use_new_zipfile_serialization=False)
    _flatten(stem, obj, expected)


def main():
    """Write all fixtures and ``expected.npz``."""
    expected = {}
    state_dict = make_state_dict()
    assert state_dict["neg_bit"].is_neg(), "fixture must carry a neg bit"
    assert state_dict["complex_conj"].is_conj(), "fixture must carry a conj bit"
    _save_both(state_dict, "state_dict", expected)
    _save_both(make_checkpoint(), "dns_checkpoint", expected)

    torch.manual_seed(2)
    itq = {"proj": torch.randn(4, 4)}
    torch.save(itq, os.path.join(HERE, "itq_like.pth"))
    _flatten("itq_like", itq, expected)

    parameter = torch.nn.Parameter(torch.randn(2, 3))
    torch.save(parameter, os.path.join(HERE, "parameter.pth"))
    _flatten("parameter", parameter, expected)

    np.savez(os.path.join(HERE, "expected.npz"), **expected)
    for name in sorted(os.listdir(HERE)):
        print(f"{name}: {os.path.getsize(os.path.join(HERE, name))} bytes")


if __name__ == "__main__":
    main()
