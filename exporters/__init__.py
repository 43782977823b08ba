"""Engine model -> verified ONNX in a model repository (see docs/export.md).

trace.py lowers a traced forward pass through each primitive's rule, rewrites.py prepares the
graph for inference, verify.py compares onnxruntime with the engine, quantize.py makes int8
models, repository.py writes atomically, export.py runs the pipeline and cli.py is
`tapeserve export`.
"""
