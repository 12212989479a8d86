"""Audio decoding for analysis: any supported file to mono float32 at a model's sample rate."""
