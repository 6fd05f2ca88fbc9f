#!/usr/bin/env bash
# `make demo`: a SecretProviderClass mounted from an emulated Azure Key Vault, then rotated.
#   1. starts kv-emulator seeded with the tutorial objects (db-password, api-key, my-secret, my-key, my-cert)
#   2. runs `keyvault-csi mount` (standalone mode) with the sample class and a 2 s poll interval
#   3. prints the files, changes my-secret in the emulator, and shows the rotated file
# Runs in a private mount namespace (root: unshare -m; normal user: unshare -rm) so the tmpfs never
# touches the host's mount table; without either, it falls back to a plainly labelled plain directory.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug}

if [ "${DEMO_IN_NS:-}" != 1 ]; then
  if [ "$(id -u)" -eq 0 ] && unshare --mount true 2>/dev/null; then
    DEMO_IN_NS=1 exec unshare --mount --propagation private -- "$0" "$@"
  elif unshare --user --map-root-user --mount true 2>/dev/null; then
    DEMO_IN_NS=1 exec unshare --user --map-root-user --mount --propagation private -- "$0" "$@"
  else
    echo "!! cannot create a mount namespace here: the demo writes into a PLAIN DIRECTORY (not tmpfs)"
    NO_TMPFS=--no-tmpfs
  fi
fi

work=$(mktemp -d -t kvcsi-demo.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work" 2>/dev/null || true; }
trap cleanup EXIT

"$BIN/kv-emulator" --seed hack/demo/seed.yaml --https-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
  --ca-file "$work/ca.pem" --ready-file "$work/ready.json" 2>"$work/emulator.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/ready.json" ] && break; sleep 0.1; done
[ -s "$work/ready.json" ] || { echo "kv-emulator did not start:"; cat "$work/emulator.log"; exit 1; }
port=$(sed -E 's/.*"https":"[^:]+:([0-9]+)".*/\1/' "$work/ready.json")
printf '%s' demo-client-secret-value >"$work/client-secret"

echo "== kv-emulator: vault demo-kv at https://demo-kv.vault.azure.net:$port (test CA $work/ca.pem)"
echo "== SecretProviderClass hack/demo/class.yaml -> $work/mnt"
"$BIN/keyvault-csi" mount --class hack/demo/class.yaml --target "$work/mnt" ${NO_TMPFS:-} \
  --client-id demo-app --client-secret-file "$work/client-secret" --rotation-poll-interval 2s \
  --azure-extra-ca-file "$work/ca.pem" --azure-resolve-to 127.0.0.1 --azure-vault-port "$port" \
  --azure-authority-host "https://login.microsoftonline.com:$port" 2>"$work/driver.log" &
pids+=($!)
for _ in $(seq 100); do [ -e "$work/mnt/my-secret" ] && break; sleep 0.1; done
[ -e "$work/mnt/my-secret" ] || { echo "mount failed:"; cat "$work/driver.log"; exit 1; }

echo "== mount: $(grep -E " $work/mnt " /proc/self/mountinfo | awk '{print $(NF-2)}' || true) $( [ -n "${NO_TMPFS:-}" ] && echo '(plain directory)')"
(cd "$work/mnt" && ls -l)
for f in db/password api-key my-secret; do printf '%-12s %s\n' "$f:" "$(cat "$work/mnt/$f")"; done
echo "my-key:      $(head -1 "$work/mnt/my-key") ($(wc -l <"$work/mnt/my-key") lines)"
echo "my-cert:     $(head -1 "$work/mnt/my-cert")"
echo "my-cert-bundle.pem blocks: $(grep -- '-----BEGIN' "$work/mnt/my-cert-bundle.pem" | tr '\n' ' ')"

echo "== an operator sets a new version of my-secret in the vault"
# (the emulator's admin endpoint; python3 rather than curl, which a minimal machine may lack)
python3 - "$work/ca.pem" "$port" <<'PY'
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[1])
req = urllib.request.Request(f"https://localhost:{sys.argv[2]}/_emulator/vaults/demo-kv/secrets/my-secret",
                             data=b'{"value":"my-rotated-value"}', method="PUT")
urllib.request.urlopen(req, context=ctx).read()
PY
for _ in $(seq 60); do [ "$(cat "$work/mnt/my-secret")" = my-rotated-value ] && break; sleep 0.1; done
echo "my-secret after rotation: $(cat "$work/mnt/my-secret")"
[ "$(cat "$work/mnt/my-secret")" = my-rotated-value ] || { echo "rotation did not happen"; cat "$work/driver.log"; exit 1; }
echo "== driver log (no secret values in it):"
sed -e 's/^/   /' "$work/driver.log" | tail -5
