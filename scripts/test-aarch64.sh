#!/usr/bin/env bash
# The engine on 64-bit ARM: builds the engine's tests for aarch64-unknown-linux-gnu and runs them under qemu-user,
# so the NEON kernels (kernels/neon.rs) meet the same correctness tests as the x86 ones on this x86 machine:
# every kernel against a float64 reference, the four-row and four-input kernels against the one-row ones bit for
# bit, softmax, attention; then the real SmolLM2 GGUF end to end (its tokenizer and template against transformers',
# its first greedy tokens against the reference outputs; ~2 minutes emulated). Timings under emulation mean
# nothing; this checks answers, not speed.
#
# Needs: `rustup target add aarch64-unknown-linux-gnu`, Debian's gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and
# qemu-user (.ci/run installs them), and the fixture model (scripts/fetch-model.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
# A Cortex-A53 (ARMv8.0, as in a Raspberry Pi 3): the kernels must not need any later extension.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu cortex-a53 -L /usr/aarch64-linux-gnu"
cargo test --locked --target "$target" -p vibecheck-engine --lib
cargo test --locked --target "$target" -p vibecheck-engine --test it -- --exact \
  smollm::gguf_tokenizer_and_template_match_transformers smollm::gguf_agrees_on_the_first_tokens_and_is_coherent
