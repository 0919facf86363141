"""Ahead-of-time compilation for accelerators this machine does not have:
TPU targets (`topologies`), the compiled steps (`compiler`), and what they
need per device against the chip's memory (`report`)."""
