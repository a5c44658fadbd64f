"""A frozen, differentiable Whisper tiny.en in PyTorch (from the CTranslate2 weights) for an ASR training loss."""
