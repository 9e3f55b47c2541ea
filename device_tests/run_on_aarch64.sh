#!/usr/bin/env bash
# The CPU device suite in an aarch64 Python, on an x86_64 Debian/Ubuntu host: a Debian bookworm
# arm64 root filesystem run by qemu-user through binfmt_misc. See README.md, "aarch64".
#
#   sudo device_tests/run_on_aarch64.sh [--compare HOST_PYTHON]
#
# Needs root (apt-get, mount, chroot, binfmt_misc) and Debian's archive and PyPI. Builds the
# root filesystem once in $ROOTFS (default /work/arm64-rootfs; keep it outside the repository);
# later runs reuse it and reinstall only this checkout's pocketrec wheel. Writes the report to
# $REPORT (default ./arm64-report.json). --compare HOST_PYTHON also runs the suite natively
# with that Python (one that has pocketrec installed) and prints both reports' parity side by
# side. Exit status: the suite's (0 passed, 1 a golden check failed), 2 for a setup failure.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rootfs="${ROOTFS:-/work/arm64-rootfs}"
report="$(realpath -m "${REPORT:-arm64-report.json}")"
mirror="${MIRROR:-http://deb.debian.org/debian}"
# A real Arm server core (ARMv8.2 + dot product; AWS Graviton2, Ampere Altra). QEMU 7.2's
# default `max` CPU also advertises SME, and XNNPACK's int8 kernels then compute wrong results
# under it (README.md, "aarch64"); QEMU 10 computes them right.
qemu_cpu="${QEMU_CPU:-neoverse-n1}"
compare_python=""
if [[ "${1:-}" == "--compare" ]]; then
    compare_python="${2:?--compare needs the host Python that has pocketrec installed}"
fi

fail() {
    echo "run_on_aarch64.sh: $*" >&2
    exit 2
}

[[ "$(id -u)" == 0 ]] || fail "needs root (apt-get, mount, chroot); run it with sudo"
[[ "$(uname -m)" == x86_64 || "$(uname -m)" == aarch64 ]] || fail "host is $(uname -m)"

# 1. qemu-user through binfmt_misc, so that arm64 executables run inside the chroot.
if ! command -v qemu-aarch64-static >/dev/null || ! command -v mmdebstrap >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        qemu-user-static binfmt-support mmdebstrap arch-test >/dev/null
fi
if [[ "$(uname -m)" != aarch64 ]]; then
    [[ -e /proc/sys/fs/binfmt_misc/register ]] \
        || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
        || fail "cannot mount binfmt_misc (a container without CAP_SYS_ADMIN?): run this on the host"
    [[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || update-binfmts --enable qemu-aarch64 \
        || fail "cannot register qemu-aarch64 with binfmt_misc: run this on the host"
    arch-test arm64 >/dev/null || fail "arm64 executables do not run here: $(arch-test arm64)"
fi

# 2. The root filesystem, from Debian's packages (about 5 minutes under emulation).
if [[ ! -x "$rootfs/usr/bin/python3" ]]; then
    mmdebstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$mirror" || fail "mmdebstrap could not build $rootfs"
fi

# 3. The wheels, downloaded on the host: this checkout's pocketrec, and its base dependencies
# at the versions it pins, as aarch64 wheels for bookworm's Python 3.11 (glibc 2.36).
wheels="$rootfs/opt/wheels"
rm -rf "$wheels" && mkdir -p "$wheels"
python3 -m pip wheel -q --no-deps -w "$wheels" "$repo"
pocketrec_wheel="$(basename "$wheels"/pocketrec-*.whl)"
platforms=(--platform manylinux2014_aarch64 --platform linux_aarch64)
for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_aarch64"); done
python3 -m pip download -q --only-binary=:all: --python-version 3.11 --implementation cp \
    "${platforms[@]}" -d "$wheels" "$wheels/$pocketrec_wheel" \
    || fail "a pinned base dependency has no aarch64 wheel for CPython 3.11 (pip's error above)"
# The pytest suite's runner, at the versions the dev extra pins.
mapfile -t pytest_pins < <(grep -oE '"pytest(-timeout)?==[^"]+"' "$repo/pyproject.toml" | tr -d '"')
python3 -m pip download -q --only-binary=:all: --python-version 3.11 --implementation cp \
    "${platforms[@]}" -d "$wheels" "${pytest_pins[@]}"
rm -rf "$rootfs/tmp/device_tests" && cp -r "$repo/device_tests" "$rootfs/tmp/device_tests"

# 4. What XNNPACK's cpuinfo reads at start. QEMU 7.2 passes the host's /proc/cpuinfo through
# (x86 text: cpuinfo then crashes), and without /sys it finds no processors and LiteRT runs
# without XNNPACK. So: an arm64 /proc/cpuinfo naming the emulated core (ISA features come from
# the auxiliary vector, which QEMU fills from QEMU_CPU), and the processor lists in /sys.
cpus="$(nproc)"
mkdir -p "$rootfs/sys/devices/system/cpu"
echo "0-$((cpus - 1))" >"$rootfs/sys/devices/system/cpu/possible"
echo "0-$((cpus - 1))" >"$rootfs/sys/devices/system/cpu/present"
for ((cpu = 0; cpu < cpus; cpu++)); do
    printf 'processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$cpu"
done >"$rootfs/etc/cpuinfo.neoverse-n1"

unmount() {
    umount "$rootfs/proc/cpuinfo" 2>/dev/null || true
    umount "$rootfs/proc" 2>/dev/null || true
    umount "$rootfs/dev" 2>/dev/null || true
}
trap unmount EXIT
unmount
mount -t proc proc "$rootfs/proc"
mount --bind "$rootfs/etc/cpuinfo.neoverse-n1" "$rootfs/proc/cpuinfo"
mount --bind /dev "$rootfs/dev"

# 5. A venv inside, the wheels installed offline, and the suite on the shipped bundles.
# QEMU reads QEMU_CPU at every exec, so the clean environment keeps it.
in_arm64() {
    QEMU_CPU="$qemu_cpu" chroot "$rootfs" /usr/bin/env -i QEMU_CPU="$qemu_cpu" \
        PATH=/usr/bin:/bin HOME=/root "$@"
}
[[ -x "$rootfs/opt/venv/bin/python" ]] || in_arm64 python3 -m venv /opt/venv
in_arm64 /opt/venv/bin/python -m pip install -q --no-index --find-links /opt/wheels pocketrec \
    "${pytest_pins[@]}"
in_arm64 /opt/venv/bin/python -m pip install -q --no-index --no-deps --force-reinstall \
    "/opt/wheels/$pocketrec_wheel"
status=0
in_arm64 /opt/venv/bin/python -m pocketrec.device_tests --shipped --out /tmp/arm64-report.json \
    >/dev/null || status=$?
[[ -s "$rootfs/tmp/arm64-report.json" ]] || fail "the suite wrote no report (status $status)"
cp "$rootfs/tmp/arm64-report.json" "$report"
echo "aarch64 report: $report (suite exit status $status)"
# The pytest suite on the same shipped bundles: cpu-xnnpack, cpu-reference, compiled-cpu
# against golden outputs made on x86_64; one JSON line each beside the report.
rm -f "$rootfs/tmp/arm64-pytest.jsonl"
in_arm64 /usr/bin/env -C /tmp \
    POCKETREC_DEVICE_BUNDLES=/opt/venv/lib/python3.11/site-packages/pocketrec/device_tests/data \
    POCKETREC_DEVICE_REPORT=/tmp/arm64-pytest.jsonl \
    /opt/venv/bin/python -m pytest -q -rs -p no:cacheprovider -o addopts="" device_tests \
    || status=1
cp "$rootfs/tmp/arm64-pytest.jsonl" "${report%.json}.pytest.jsonl"

# 6. Parity per bundle on the CPU; with --compare, beside the host's.
reports=("$report")
if [[ -n "$compare_python" ]]; then
    native="${report%.json}.native.json"
    "$compare_python" -m pocketrec.device_tests --shipped --out "$native" >/dev/null || true
    reports+=("$native")
fi
python3 - "${reports[@]}" <<'EOF'
import json
import sys

for path in sys.argv[1:]:
    report = json.load(open(path))
    print(f"{report['machine']['platform']}: passed={report['passed']}")
    for bundle in report["bundles"]:
        cpu = bundle["accelerators"]["cpu"]
        print(
            f"  {bundle['recipe']:<16} {cpu['status']:<7} relative_error="
            f"{cpu.get('relative_error', float('nan')):.3g} (tolerance {cpu.get('tolerance')}) "
            f"latency p50={cpu.get('latency_us', {}).get('p50')} us"
        )
EOF
exit "$status"
