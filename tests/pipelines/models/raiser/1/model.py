"""Fails on request: X[0] == 1 raises from execute (every request of the call fails);
X[0] == 2 answers that request alone with an error response (INVALID_ARG)."""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            if (x[:, 0] == 1).any():
                raise ValueError("X[0] == 1 is not allowed")
            if (x[:, 0] == 2).any():
                error = pb_utils.TritonError(
                    "X[0] == 2 is refused", pb_utils.TritonError.INVALID_ARG
                )
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * 2)]))
        return responses
