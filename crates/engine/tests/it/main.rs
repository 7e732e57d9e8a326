//! Integration tests of the engine: correctness against transformers' reference outputs, the real SmolLM2
//! model in both formats, and hostile input. One binary for the whole crate keeps link time down.

mod bad_input;
mod fixtures;
mod gguf_reader;
mod gguf_roundtrip;
mod hostile;
mod hub;
mod reference;
mod scheduler;
mod smollm;
