"""Triton's add_sub example: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1.

REQUESTS tells how many requests the execute call that answered this one received.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = model_config = json.loads(args["model_config"])
        self.names = (args["model_name"], args["model_version"], args["model_instance_kind"])
        output0_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT0")
        output1_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT1")
        self.output0_dtype = pb_utils.triton_string_to_numpy(output0_config["data_type"])
        self.output1_dtype = pb_utils.triton_string_to_numpy(output1_config["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            a, b = in_0.as_numpy(), in_1.as_numpy()
            out_0 = pb_utils.Tensor("OUTPUT0", (a + b).astype(self.output0_dtype))
            out_1 = pb_utils.Tensor("OUTPUT1", (a - b).astype(self.output1_dtype))
            count = np.full((a.shape[0], 1), len(requests), dtype=np.int32)
            out_2 = pb_utils.Tensor("REQUESTS", count)
            responses.append(pb_utils.InferenceResponse(output_tensors=[out_0, out_1, out_2]))
        return responses

    def finalize(self):
        print("Cleaning up...")
