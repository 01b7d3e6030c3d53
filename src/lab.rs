//! A local lab of real OpenSSH nodes on loopback addresses, for tests, demos and benchmarks.
