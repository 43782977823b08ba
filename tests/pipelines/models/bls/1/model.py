"""Business logic scripting: calls the model named in MODEL_NAME with INPUT0 and INPUT1 and
returns its OUTPUT0; the called model's error becomes this request's error."""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            name = pb_utils.get_input_tensor_by_name(request, "MODEL_NAME").as_numpy()[0][0]
            infer_request = pb_utils.InferenceRequest(
                model_name=name.decode(),
                requested_output_names=["OUTPUT0"],
                inputs=[in_0, in_1],
            )
            infer_response = infer_request.exec()
            if infer_response.has_error():
                raise pb_utils.TritonModelException(infer_response.error().message())
            output0 = pb_utils.get_output_tensor_by_name(infer_response, "OUTPUT0")
            out = pb_utils.Tensor("OUTPUT0", output0.as_numpy())
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
