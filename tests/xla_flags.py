"""XLA flags of the test suite's CPU processes: N simulated devices, compiled fast.

LLVM at -O0 without its expensive passes compiles the same XLA programs (so the same results, to float
rounding) in far less time, and most of the suite's time is compiling tiny models: test_losses.py took
95 s with the default and 55 s with these flags on 2 busy cores (2026-12-06)."""

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def cpu_devices(n: int) -> str:
  """XLA_FLAGS for a process with `n` CPU devices, compiled fast."""
  return f"--xla_force_host_platform_device_count={n} {FAST_COMPILE}"
