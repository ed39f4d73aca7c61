"""The engine service: one vLLM engine of a pool behind gRPC (Inference + EngineControl)."""
