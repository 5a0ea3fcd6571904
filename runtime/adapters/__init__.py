"""Engine adapters: the only code that speaks a broker's protocol (DESIGN section 4)."""
