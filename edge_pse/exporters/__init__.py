"""Exporters of the streaming step to ExecuTorch (.pte), LiteRT (.tflite) and ONNX, plus the shared stages."""
