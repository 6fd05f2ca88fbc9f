#!/usr/bin/env bash
# Runs a command where it may mount tmpfs without touching the host's mount table:
#   root        -> a private mount namespace (unshare -m)
#   normal user -> an unprivileged user + mount namespace (unshare -rm), where it is root
# If neither works, say so and fail: mount tests must never pass by being skipped.
set -euo pipefail
mode=${MOUNT_NS:-auto}   # auto | root | user
if [ "$mode" = auto ]; then
  if [ "$(id -u)" -eq 0 ]; then mode=root; else mode=user; fi
fi
case "$mode" in
  root)
    exec unshare --mount --propagation private -- "$@" ;;
  user)
    if ! unshare --user --map-root-user --mount true 2>/dev/null; then
      echo "error: the mount tests need CAP_SYS_ADMIN: run as root, or enable unprivileged user namespaces" \
           "(sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0) so 'unshare -rm' works" >&2
      exit 1
    fi
    exec unshare --user --map-root-user --mount --propagation private -- "$@" ;;
  *)
    echo "error: MOUNT_NS must be auto, root or user (got '$mode')" >&2; exit 1 ;;
esac
