"""execution: exchange adapters and the paper exchange; approved signals in, orders out."""
