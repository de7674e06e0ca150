"""HTTP serving of trained runs: an OpenAI-compatible FastAPI app (`lmlab serve`)."""
