//! The workspace root package. It exists to own the end-to-end and simulation tests in `tests/`.
