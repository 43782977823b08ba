"""SCORES = X (FP32, labelled), COUNTS = X as INT32 (unlabelled): for classification."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            scores = pb_utils.Tensor("SCORES", x.astype(np.float32))
            counts = pb_utils.Tensor("COUNTS", x.astype(np.int32))
            responses.append(pb_utils.InferenceResponse([scores, counts]))
        return responses
