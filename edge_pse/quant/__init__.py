"""int8 quantization of the streaming step: calibration data, PT2E PTQ and QAT (torch lives in ptq/qat only)."""
