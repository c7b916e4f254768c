#!/usr/bin/env bash
# Build parallelproj's C/OpenMP library (libparallelproj_c) from its public source, for
# bench/parallelproj_compare.py. Not a pet_dl dependency: the result goes to bench/_build/
# (git-ignored) and nothing of parallelproj is installed into the environment.
#
# Usage: bench/build_parallelproj.sh [SOURCE] [REF]
#   SOURCE  a parallelproj source checkout (a folder with CMakeLists.txt and c/), or a git
#           URL / repository path to clone (default https://github.com/gschramm/parallelproj.git)
#   REF     tag or branch to clone when SOURCE is a git URL (default v1.10.2; the C kernels
#           joseph3d_fwd / joseph3d_back live in c/ of parallelproj up to 1.10.x)
# Environment: CMAKE_C_FLAGS (extra compiler flags, default none: cmake's Release, -O3).
#
# Needs: git (for a URL), cmake >= 3.16, a C compiler with OpenMP (gcc: -fopenmp, libgomp).
# Output: bench/_build/parallelproj/lib/libparallelproj_c.so (and include/parallelproj_c.h).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build_root="${here}/_build"
source_arg="${1:-https://github.com/gschramm/parallelproj.git}"
ref="${2:-v1.10.2}"

for tool in cmake cc; do
    command -v "${tool}" >/dev/null || { echo "build_parallelproj: '${tool}' not found (need cmake and a C compiler with OpenMP)" >&2; exit 2; }
done

mkdir -p "${build_root}"
if [[ -f "${source_arg}/CMakeLists.txt" && -d "${source_arg}/c" ]]; then
    src="$(cd "${source_arg}" && pwd)"
    echo "build_parallelproj: using source checkout ${src}"
else
    command -v git >/dev/null || { echo "build_parallelproj: git not found (needed to clone ${source_arg})" >&2; exit 2; }
    src="${build_root}/parallelproj-src"
    rm -rf "${src}"
    echo "build_parallelproj: cloning ${source_arg} at ${ref}"
    git clone --quiet --depth 1 --branch "${ref}" "${source_arg}" "${src}"
fi
if [[ ! -f "${src}/c/src/joseph3d_fwd.c" ]]; then
    echo "build_parallelproj: ${src} has no c/src/joseph3d_fwd.c (parallelproj >= 2 moved the C code" \
         "to libparallelproj; use a 1.x tag such as v1.10.2)" >&2
    exit 2
fi

build="${build_root}/parallelproj-build"
prefix="${build_root}/parallelproj"
rm -rf "${build}" "${prefix}"
cmake -S "${src}" -B "${build}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_FLAGS="${CMAKE_C_FLAGS:-}" \
    -DCMAKE_INSTALL_PREFIX="${prefix}" \
    -DCMAKE_INSTALL_LIBDIR=lib \
    -DSKIP_CUDA_LIB=TRUE -DSKIP_DOCS=TRUE -DBUILD_TESTING=OFF
cmake --build "${build}" --parallel 2
cmake --install "${build}" >/dev/null

lib="${prefix}/lib/libparallelproj_c.so"
[[ -f "${lib}" ]] || { echo "build_parallelproj: build finished but ${lib} is missing" >&2; exit 1; }
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "${src}/pyproject.toml" | head -1)"
commit="$(git -C "${src}" rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "${version} ${commit}" > "${prefix}/VERSION"
echo "build_parallelproj: built parallelproj ${version} (${commit}): ${lib}"
