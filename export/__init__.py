"""Model export of the inference generator (names and shapes in `wrapper`).

pipeline     export_run(run, out, options): writes, checks and records every artifact (drgan-export)
wrapper      the traced module: inputs cond, z, noise0..noise2; outputs image, grade_logits
onnx_export  ONNX (dynamo exporter, opset 23, `Attention` per SCA block, dynamic batch)
onnx_files   the model and its external weights file, written atomically (no torch)
onnx_check   ONNX checker, shape inference, op types, the N x N tensor guard
onnx_plugin  the ONNX whose spatial attentions are drgan::DrganSpatialAttention nodes (TensorRT plugin)
ort_runner   ONNX Runtime session and the comparison with PyTorch
sidecar      BatchProfile and the JSON sidecar beside every engine and package
trt_build    TensorRT engine builder; trt_runner: the engine runner
aoti         AOTInductor .pt2 packages
backends     open_onnxruntime | open_tensorrt | open_aoti: the runtimes the synthesis backends load
"""
