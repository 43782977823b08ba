"""ResNet-50 in torch (torchvision's v1.5 definition: stride on the 3x3 convolution), exported
by torch.onnx's dynamo exporter with a dynamic batch dimension, and its fp16 and int8 variants.

torchvision itself is not used: PyPI's wheels are built against CUDA torch and fail to import
beside the CPU torch==2.13.0 wheel ("operator torchvision::nms does not exist"). The modules and
parameter names below are torchvision's, so a torchvision state_dict loads into them.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx


@dataclass(frozen=True)
class ResNetSize:
    layers: tuple[int, int, int, int]
    width: int  # channels of the stem; stages use width, 2x, 4x, 8x (times 4 after expansion)
    image: int
    classes: int


SIZES = {
    "full": ResNetSize((3, 4, 6, 3), 64, 224, 1000),  # ResNet-50: 25.6 M parameters
    "small": ResNetSize((1, 1, 1, 1), 8, 32, 10),
}


def resnet(size: ResNetSize, seed: int = 0):
    """The torch module, seeded, in eval mode, with non-trivial BatchNorm statistics."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin: int, width: int, stride: int, downsample) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(width * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            return self.relu(self.bn3(self.conv3(out)) + identity)

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = size.width
            self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(w)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin, stages = w, []
            for i, blocks in enumerate(size.layers):
                width, layer = w * 2**i, []
                for j in range(blocks):
                    stride = 2 if j == 0 and i > 0 else 1
                    down = None
                    if j == 0 and (stride != 1 or cin != width * 4):
                        down = nn.Sequential(
                            nn.Conv2d(cin, width * 4, 1, stride, bias=False),
                            nn.BatchNorm2d(width * 4),
                        )
                    layer.append(Bottleneck(cin, width, stride, down))
                    cin = width * 4
                stages.append(nn.Sequential(*layer))
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, size.classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    torch.manual_seed(seed)
    model = ResNet()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):  # as after training: folding is not a no-op
                n = module.num_features
                module.weight.copy_(1 + 0.1 * torch.randn(n, generator=gen))
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(1 + 0.1 * torch.rand(n, generator=gen))
    return model.eval()


@functools.cache
def exported(size_name: str) -> tuple[object, bytes]:
    """(torch module, ONNX bytes) of ResNet-50 at `size_name`, exported once per process."""
    import torch

    size = SIZES[size_name]
    model = resnet(size)
    example = torch.randn(2, 3, size.image, size.image)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        opset_version=18,
        verbose=False,
    )
    with tempfile.TemporaryDirectory(prefix="modelzoo-") as folder:
        path = Path(folder) / "model.onnx"
        program.save(str(path))
        return model, path.read_bytes()


def images(size_name: str, batch: int, seed: int = 0) -> np.ndarray:
    """`batch` normalised images [N, 3, H, W] FP32 (what a preprocessing step hands a model)."""
    size = SIZES[size_name].image
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, 3, size, size), dtype=np.float32)


def torch_logits(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(x, np.float32))).numpy()


def fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights, activations, input and output in FP16 (onnxruntime's float16 converter)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=False)


def int8(source: str, target: str, size_name: str) -> None:
    """Static QDQ quantisation (int8 per-channel weights, uint8 activations) calibrated on a few
    seeded images, as onnxruntime.quantization documents for CNNs."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter({"input": images(size_name, 1, seed=100 + i)} for i in range(4))

        def get_next(self):
            return next(self._batches, None)

    quantize_static(
        source,
        target,
        Calibration(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
    )
