#!/usr/bin/env bash
# The device suite on a lent GPU machine (see DEVELOPERS.md, "GPU machine"). Run it there, in
# the repository root, with `.gl` (Vulkan loader .debs) and `.whl` (Python 3.12 wheels:
# pocketrec, ai-edge-litert, backports.strenum) carried. Writes $OUT/device-report.json
# (the JSON report) and $OUT/device-pytest.log.
set -uo pipefail
for deb in .gl/*.deb; do dpkg -x "$deb" /; done
ldconfig
if ! ldconfig -p | grep -q 'libvulkan.so.1'; then
    echo "no Vulkan loader after unpacking .gl: fetch the .debs again (DEVELOPERS.md)" >&2
    exit 2
fi
# The NVIDIA driver's Vulkan ICD lives on a read-only mount there.
export VK_DRIVER_FILES="${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
out="${OUT:-/tmp/device-out}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
echo "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE-unset}, $(nproc) CPUs"
# The installed wheel's suite on its shipped bundles (no TensorFlow there).
python3 -m pocketrec.device_tests --shipped --out "$out/device-report.json"
status=$?
# The pytest suite on the same bundles, from this checkout's device_tests/.
shipped="$(python3 -c 'import pocketrec.device_tests as d, os; print(os.path.dirname(d.__file__))')/data"
POCKETREC_DEVICE_BUNDLES="$shipped" python3 -m pytest -q -rsx -p no:cacheprovider \
    -o addopts="" device_tests 2>&1 | tee "$out/device-pytest.log"
exit "$status"
