#!/usr/bin/env bash
# Reproduce the dashboard's vendored JavaScript: `npm pack` each pinned package from the npm registry and copy its
# built file and licence next to each other. Needs npm; the output is committed, so running Graft needs no npm.
set -euo pipefail
cd "$(dirname "$0")/.."
STATIC=api/static/vendor
TESTS=tests/browser/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fetch() {  # fetch NAME@VERSION: unpack its tarball into $work/NAME
  local spec=$1 name=${1%@*}
  (cd "$work" && npm pack --silent "$spec" >/dev/null && mkdir -p "$name" && tar -xzf ./*.tgz -C "$name" && rm ./*.tgz)
}

mkdir -p "$STATIC" "$TESTS"
# Alpine's CSP build: it parses the page's expressions itself, so the page's policy needs no 'unsafe-eval'.
fetch @alpinejs/csp@3.17.4
cp "$work/@alpinejs/csp/package/dist/cdn.min.js" "$STATIC/alpine-csp.min.js"
# The tarball ships no licence file; its package.json says MIT, author Caleb Porzio: write the MIT text.
node -e 'const p=require(process.argv[1]); if (p.license !== "MIT") process.exit(1)' "$work/@alpinejs/csp/package/package.json"
cat > "$STATIC/alpine-csp.LICENSE.md" <<'MIT'
MIT License (from the @alpinejs/csp 3.17.4 package.json: "license": "MIT", "author": "Caleb Porzio")

Copyright (c) 2019-2025 Caleb Porzio and contributors

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the Software without restriction, including without limitation
the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to
permit persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of
the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE
WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR
COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
MIT
fetch chart.js@4.4.9
cp "$work/chart.js/package/dist/chart.umd.js" "$STATIC/chart.umd.js"
cp "$work/chart.js/package/LICENSE.md" "$STATIC/chart.LICENSE.md"
fetch fflate@0.8.2  # zips a dropped folder in the browser: the API takes one archive
cp "$work/fflate/package/umd/index.js" "$STATIC/fflate.umd.js"
cp "$work/fflate/package/LICENSE" "$STATIC/fflate.LICENSE"
fetch axe-core@4.10.3
cp "$work/axe-core/package/axe.min.js" "$TESTS/axe.min.js"
cp "$work/axe-core/package/LICENSE" "$TESTS/axe.LICENSE"
sha256sum "$STATIC"/*.js "$TESTS"/*.js
