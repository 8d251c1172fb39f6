#!/usr/bin/env bash
# Regenerate book/_vendor/: the JavaScript the built book needs to render math and ipywidgets with no
# internet access (MathJax 3, RequireJS, the ipywidgets HTML manager), taken from the npm registry.
# The result is committed, so building the book needs only Python and pip; run this script (needs npm)
# only to upgrade the vendored versions, then commit book/_vendor including SHA256SUMS.
set -euo pipefail
cd "$(dirname "$0")/.."
MATHJAX=mathjax@3.2.2
REQUIREJS=requirejs@2.3.8
HTMLMANAGER=@jupyter-widgets/html-manager@1.0.15
out=book/_vendor/vendor
tmp=$(mktemp -d)
(cd "$tmp" && npm pack --silent "$MATHJAX" "$REQUIREJS" "$HTMLMANAGER" >/dev/null && for f in *.tgz; do mkdir "${f%.tgz}" && tar xzf "$f" -C "${f%.tgz}"; done)
rm -rf "$out" && mkdir -p "$out"/mathjax/output/chtml/fonts "$out"/requirejs "$out"/html-manager
mj=$(echo "$tmp"/mathjax-*/package)
cp "$mj"/es5/tex-chtml-full.js "$mj"/LICENSE "$out"/mathjax/
cp -r "$mj"/es5/ui "$mj"/es5/a11y "$out"/mathjax/
cp -r "$mj"/es5/output/chtml/fonts/woff-v2 "$out"/mathjax/output/chtml/fonts/
cp "$tmp"/requirejs-*/package/require.js "$out"/requirejs/
hm=$(echo "$tmp"/jupyter-widgets-html-manager-*/package)
cp "$hm"/dist/embed-amd.js "$hm"/dist/*.woff "$hm"/dist/*.woff2 "$hm"/dist/embed.js.LICENSE.txt "$out"/html-manager/
cat > "$out"/README.md <<TXT
Vendored from the npm registry by scripts/vendor_js.sh (do not edit by hand):
- $MATHJAX (Apache-2.0, LICENSE in mathjax/): es5/tex-chtml-full.js, ui/, a11y/, CHTML woff-v2 fonts
- $REQUIREJS (MIT, (c) jQuery Foundation and other contributors): require.js
- $HTMLMANAGER (BSD-3-Clause, (c) Jupyter Development Team; bundled third-party licences in
  html-manager/embed.js.LICENSE.txt): dist/embed-amd.js and its woff/woff2 icon fonts
Checksums: SHA256SUMS (verified by tests/test_book.py).
TXT
(cd "$out" && find . -type f ! -name SHA256SUMS | sort | xargs sha256sum > SHA256SUMS)
rm -rf "$tmp"
du -sh "$out"
