"""A zoo of models nobody here wrote, generated on the fly with seeded random weights.

Each member is made by the framework users really export from (torch.onnx, transformers,
onnxruntime's quantizer and transformer optimizer, skl2onnx, onnxmltools) or, for graphs no
framework makes small (data-dependent detectors, a >= 2 GB model with external data files), by
onnx's own helpers. `build(name, repository)` writes `<repository>/<name>/1/model.onnx` (and its
data files) plus a `config.json`, and returns a `ZooModel` that also knows how to make inputs and
what the framework that made the model answers for them.

Tests use `size="small"` (narrow layers, small images, few trees: seconds to build); the
benchmark uses `size="full"` (ResNet-50 at 224x224, BERT-base, 2 GiB of weights). Everything a
member needs beyond the server's own dependencies (torch, transformers, scikit-learn, ...) is
imported when that member is built, so the zoo costs nothing to import.

    from modelzoo import build
    member = build("resnet50", Path("/tmp/repo"), size="small")
    feeds = member.inputs(batch=4)
    expected = member.reference(feeds)           # what torch answers
"""

from __future__ import annotations

from modelzoo.members import MEMBERS, build
from modelzoo.model import ZooModel

__all__ = ["MEMBERS", "ZooModel", "build"]
