#!/usr/bin/env bash
# Wheels of what the GPU machine's image lacks (docs/development.md, "On a GPU machine"):
# dropdyn's runtime dependencies not in that image, at the versions of this venv, into .whl/
# (ignored by git; carried to the machine). Needs network access here, none there.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info && echo /.whl/ >> .git/info/exclude; }
PY=${PY:-.venv/bin/python}
names="pot mlxtend dask distributed partd locket tblib zict tornado cloudpickle toolz fsspec"
pins=$($PY -m pip freeze | awk -F== -v want=" $names " 'index(want, " " tolower($1) " ") {print}')
rm -rf .whl && mkdir .whl
# shellcheck disable=SC2086
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $pins
ls .whl
du -sh .whl
