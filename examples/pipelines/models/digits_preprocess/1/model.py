"""Encoded image (PNG, JPEG, ... any size, colour or grey) -> the digits CNN's 8x8 input.

IMAGE elements are the file's bytes (binary tensors, gRPC) or its base64 text (V2 JSON carries
BYTES as strings, so a JSON client sends the file base64-encoded).

The digits the CNN learnt are light strokes on a dark background, scaled to [0, 1]; a photo or
a scan is usually dark ink on light paper, so an image whose border is light is inverted.
Written as a Triton Python-backend model: it runs unchanged under Triton.
"""

import base64
import binascii
import io

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        try:
            from PIL import Image
        except ImportError:
            raise ImportError(
                "digits_preprocess needs Pillow: pip install 'tapeserve[pipelines]' (or pillow)"
            ) from None
        self.image = Image

    def open(self, data: bytes):
        try:
            return self.image.open(io.BytesIO(data))
        except Exception:
            try:
                decoded = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("neither an image file nor base64 text of one") from None
            return self.image.open(io.BytesIO(decoded))

    def to_pixels(self, data: bytes) -> np.ndarray:
        try:
            image = self.open(data)
            image = image.convert("L").resize((8, 8), self.image.Resampling.BOX)
        except Exception as exc:
            raise ValueError(f"IMAGE is not a readable image ({exc})") from None
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        if border.mean() > 0.5:  # dark ink on light paper
            pixels = 1.0 - pixels
        return pixels.reshape(1, 8, 8)

    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            try:
                pixels = np.stack([self.to_pixels(row[0]) for row in images])
            except ValueError as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PIXELS", pixels)]))
        return responses
