"""The gRPC front door: KServe V2 / Triton's `inference.GRPCInferenceService` over the inference
core, the standard health service and server reflection, served by every worker."""
