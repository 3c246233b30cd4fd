//! Synthetic smears (stub, filled in by the synth work).
