#!/usr/bin/env bash
# Write the secret files an overlay's secretGenerator reads, into <overlay>/secrets/ (mode 0600,
# git-ignored): a service token, an admin token, principals.json holding only their SHA-256
# hashes (the format of RUNBOX_AUTH__PRINCIPALS_FILE), and a database password.
# Existing files are kept, so running it again changes nothing.
#   deploy/k8s/make-secrets.sh deploy/k8s/overlays/dev
#   kubectl apply -k deploy/k8s/overlays/dev
# The admin token (secrets/admin.token) is for your CLI: `runbox --token-file ...`; it is not
# put in any Secret.
set -euo pipefail
overlay=${1:?usage: make-secrets.sh <overlay directory>}
dir="$overlay/secrets"
mkdir -p "$dir"
chmod 0700 "$dir"
umask 077

new_secret() {  # $1 + 32 random bytes in URL-safe base64, no newline
  python3 -c 'import secrets, sys; print(sys.argv[1] + secrets.token_urlsafe(32), end="")' "$1"
}

for name in service-token admin.token; do  # tokens look like `runbox up`'s: rbx_...
  [[ -s "$dir/$name" ]] || new_secret rbx_ > "$dir/$name"
done
[[ -s "$dir/database-password" ]] || new_secret "" > "$dir/database-password"

python3 - "$dir" <<'PY'
import hashlib, json, sys
from pathlib import Path

d = Path(sys.argv[1])
def digest(name: str) -> str:
    return hashlib.sha256((d / name).read_text().strip().encode()).hexdigest()

principals = {"principals": [
    {"name": "admin", "token_sha256": digest("admin.token"), "permissions": ["*"]},
    {"name": "runbox-services", "token_sha256": digest("service-token"), "permissions": ["*"]},
]}
(d / "principals.json").write_text(json.dumps(principals, indent=2) + "\n")
PY
printf '*\n' > "$dir/.gitignore"  # ignores itself too: nothing here is ever committed
echo "secrets in $dir: service-token, admin.token, principals.json, database-password"
