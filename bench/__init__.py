"""rtcore.bench: benchmarks that measure rtcore against diffusers in the same process and run."""
