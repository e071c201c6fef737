#!/bin/bash
# Builds the LLaVA tree for Ascend beside this script: upstream LLaVA at commit 5d8f176 plus the NPU patch
# (AscendCloud-AIGC 6.3.906, llava-train). Stand-in for the simulated fleet: the real script fetches upstream
# LLaVA from GitHub; this package carries that snapshot in upstream/LLaVA. Safe to run again: files are
# refreshed in place and nothing else in LLaVA/ (playground data, checkpoints) is touched.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
COMMIT="5d8f1760c08b7dfba3ae97b71cbd4c6f17d12dbd"
UPSTREAM="${HERE}/upstream/LLaVA"
PATCH="${HERE}/npu_patch"
DEST="${HERE}/LLaVA"
PYTHON="${PYTHON:-python3}"

fail() {
    echo "build.sh: ERROR: $*" >&2
    exit 1
}

echo "build.sh: preparing LLaVA ${COMMIT} for Ascend in ${DEST}"

for required in \
    "${UPSTREAM}/llava/train/train.py" \
    "${UPSTREAM}/llava/model/llava_arch.py" \
    "${UPSTREAM}/scripts/zero2.json" \
    "${PATCH}/llava/train/train_mem.py" \
    "${PATCH}/scripts/v1_5/pretrain_new.sh"; do
    [ -f "${required}" ] || fail "missing ${required#"${HERE}"/}: the package is incomplete"
done

# The real script pip-installs LLaVA's requirements into the image's Python; the stand-in's come with the
# training image, so check they are importable rather than install anything.
"${PYTHON}" -c "import torch, PIL" 2>/dev/null \
    || fail "${PYTHON} cannot import torch and PIL: wrong image or Python"

mkdir -p "${DEST}"
# "git checkout ${COMMIT}", then the NPU patch on top.
cp -R "${UPSTREAM}/." "${DEST}/"
cp -R "${PATCH}/." "${DEST}/"
chmod +x "${DEST}/scripts/v1_5/"*.sh
mkdir -p "${DEST}/playground/data" "${DEST}/checkpoints"
echo "${COMMIT}" >"${DEST}/.llava_commit"

[ -f "${DEST}/llava/train/train_mem.py" ] || fail "LLaVA tree incomplete after copy"
echo "build.sh: done: ${DEST}"
