#!/usr/bin/env bash
# Builds the Azure Functions deployment package for Customer360:
#   <out>/functions-app/                 host.json, <Function>/function.json..., customer360
#   <out>/customer360-functions.zip      the same files, zipped, executable bit kept
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/package.sh [--binary PATH] [--out DIR]

Assembles the Functions app folder (host.json + one folder per function +
the Linux x86_64 binary at the root) and zips it for zip deployment.

  --binary PATH  use this binary instead of running cargo build
                 (it is copied into the package as "customer360")
  --out DIR      output directory (default: dist in the repository root);
                 writes DIR/functions-app/ and DIR/customer360-functions.zip
  -h, --help     show this text

Without --binary the script runs
  cargo build --release --locked --target x86_64-unknown-linux-gnu
when that rustup target is installed, or a plain
  cargo build --release --locked
when the host itself is x86_64 Linux. It never downloads a toolchain.
EOF
}

die() { echo "package.sh: $*" >&2; exit 1; }

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
binary=""
out_dir="$repo_root/dist"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --binary) [[ $# -ge 2 ]] || die "--binary needs a path"; binary="$2"; shift 2 ;;
    --binary=*) binary="${1#*=}"; shift ;;
    --out) [[ $# -ge 2 ]] || die "--out needs a directory"; out_dir="$2"; shift 2 ;;
    --out=*) out_dir="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

linux_target="x86_64-unknown-linux-gnu"

# The name the host starts (host.json customHandler.description.defaultExecutablePath) is the
# one source of truth for what the binary is called inside the package.
exe_name="$(python3 - "$repo_root/host.json" <<'EOF'
import json, sys
with open(sys.argv[1], encoding="utf-8") as f:
    print(json.load(f)["customHandler"]["description"]["defaultExecutablePath"])
EOF
)"
[[ "$exe_name" != */* && -n "$exe_name" ]] || die "defaultExecutablePath must be a bare file name at the package root, got '$exe_name'"

build_binary() {
  command -v cargo >/dev/null || die "cargo not found (or pass --binary PATH)"
  local target_dir
  target_dir="$(cd "$repo_root" && cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"

  if command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx "$linux_target"; then
    echo "package.sh: cargo build --release --locked --target $linux_target" >&2
    (cd "$repo_root" && cargo build --release --locked --target "$linux_target" --bin customer360) >&2
    binary="$target_dir/$linux_target/release/customer360"
  elif [[ "$(uname -s)" == "Linux" && "$(uname -m)" == "x86_64" ]]; then
    echo "package.sh: cargo build --release --locked (host is x86_64 Linux)" >&2
    (cd "$repo_root" && cargo build --release --locked --bin customer360) >&2
    binary="$target_dir/release/customer360"
  else
    die "cannot build for $linux_target here: the rustup target is not installed and the host is $(uname -s)/$(uname -m); pass --binary PATH"
  fi
}

if [[ -z "$binary" ]]; then
  build_binary
fi
[[ -f "$binary" ]] || die "binary not found: $binary"

mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"
app_dir="$out_dir/functions-app"
zip_path="$out_dir/customer360-functions.zip"

rm -rf "$app_dir" "$zip_path"
mkdir -p "$app_dir"

cp "$repo_root/host.json" "$app_dir/host.json"

shopt -s nullglob
function_dirs=("$repo_root"/functions/*/)
[[ ${#function_dirs[@]} -gt 0 ]] || die "no function folders under functions/"
for dir in "${function_dirs[@]}"; do
  name="$(basename "$dir")"
  [[ -f "$dir/function.json" ]] || die "functions/$name has no function.json"
  # Only function.json is deployed: the host reads nothing else from a custom-handler function folder.
  mkdir -p "$app_dir/$name"
  cp "$dir/function.json" "$app_dir/$name/function.json"
done

cp "$binary" "$app_dir/$exe_name"
chmod 755 "$app_dir/$exe_name"

# Files only (no directory entries), Unix mode bits stored in external_attr so the
# Linux host can exec the binary straight from the mounted package.
python3 - "$app_dir" "$zip_path" <<'EOF'
import os, sys, zipfile
app_dir, zip_path = sys.argv[1], sys.argv[2]
paths = []
for root, dirs, files in os.walk(app_dir):
    dirs.sort()
    for name in sorted(files):
        paths.append(os.path.join(root, name))
with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
    for path in paths:
        arcname = os.path.relpath(path, app_dir).replace(os.sep, "/")
        info = zipfile.ZipInfo.from_file(path, arcname)
        info.create_system = 3  # Unix, so external_attr's high 16 bits are read as st_mode
        info.external_attr = (os.stat(path).st_mode & 0xFFFF) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        with open(path, "rb") as f:
            zf.writestr(info, f.read())
EOF

echo "package.sh: wrote $app_dir"
echo "package.sh: wrote $zip_path"
