#!/usr/bin/env bash
# Build Switchyard's images, tagged by the version in pyproject.toml (the tags deploy/k8s's
# overlays reference), and push them when REGISTRY is set:
#
#   deploy/docker/build.sh                     # switchyard/switchyard:<version>-{cpu,gpu}
#   REGISTRY=ghcr.io/acme deploy/docker/build.sh cpu    # ghcr.io/acme/switchyard:<version>-cpu, pushed
set -euo pipefail
cd "$(dirname "$0")/../.."
version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
repo=${REGISTRY:+$REGISTRY/switchyard}
repo=${repo:-switchyard/switchyard}
for flavour in "${@:-cpu gpu}"; do
  for f in $flavour; do
    case $f in
      cpu) args=(--build-arg SWITCHYARD_GPU=0) ;;
      gpu) args=(--build-arg SWITCHYARD_GPU=1 --build-arg SWITCHYARD_TORCH_INDEX=) ;;
      *) echo "build.sh: unknown flavour $f (cpu or gpu)" >&2; exit 2 ;;
    esac
    tag="$repo:$version-$f"
    echo "[build] $tag"
    docker build -f deploy/docker/Dockerfile "${args[@]}" -t "$tag" .
    if [ -n "${REGISTRY:-}" ]; then docker push "$tag"; fi
  done
done
