"""Audio helpers: G.711 μ-law codec, resampling, WAV files."""
