//! Benchmarks of the core (placeholder until the bench work lands).

fn main() {}
