"""ai_engine: the pluggable signal model; market.tick in, ai.signal.generated out."""
