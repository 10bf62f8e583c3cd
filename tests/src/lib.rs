//! Whole-system tests for Causeway live in `tests/tests/`; this crate also builds the helper
//! programs they drive (for example `crash-writer`, which the store crash test kills with
//! `SIGKILL`).
