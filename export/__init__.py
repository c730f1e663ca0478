"""Model export: ONNX, ONNX Runtime, TensorRT, AOTInductor."""
