#!/usr/bin/env bash
# The project's test command (README "Tests"; CI runs it through .ci/run). It installs what the
# tests need beyond the Rust toolchain, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install the Rust toolchain (https://rustup.rs) first" >&2
    exit 1
fi
cargo --version
# `gptoss chat` is tested in a terminal driven through tmux (crates/cli/tests/chat.rs).
command -v tmux >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux)
# The wgpu backend's tests run on lavapipe (Mesa's software Vulkan driver) + the Vulkan loader
# (crates/backends/wgpu/tests/fixtures.rs fails without an adapter).
if ! compgen -G '/usr/share/vulkan/icd.d/lvp_icd.*.json' >/dev/null || ! ldconfig -p | grep -q 'libvulkan\.so\.1'; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1
fi
# `gptoss serve` is tested with the official `openai` Python package (crates/cli/tests/serve.rs
# runs tests/server/*.py with $GPTOSS_PYTHON): a virtual environment with openai and pytest.
VENV=target/ci-venv
if ! "$VENV/bin/python" -c "import openai, pytest" >/dev/null 2>&1; then
    command -v python3 >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3)
    # Debian/Ubuntu ship venv (ensurepip) separately.
    python3 -m venv "$VENV" || { rm -rf "$VENV"; apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && python3 -m venv "$VENV"; }
    "$VENV/bin/pip" install --quiet --upgrade openai pytest
fi
export GPTOSS_PYTHON="$PWD/$VENV/bin/python"
# Every test (a failing pytest fails its cargo test, and so this script):
cargo test --workspace "$@"
