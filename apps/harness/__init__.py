"""Pieces the crash demo, the tests and the benchmarks share: the upstream stand-in (the
independent witness), child-process supervision by PID, and the private Redis launcher."""
