#!/usr/bin/env bash
# ci/k8s-cluster.sh - a real single-node Kubernetes 1.20.2 for tests/test_k8s_real.py, from Debian
# packages only (no container registry, nothing downloaded from elsewhere), on a Debian bookworm
# machine as root: the steps of ../shared/k8s-lab/recipe.sh, cached, plus what the test needs.
#
#   ci/k8s-cluster.sh up     # install, build, images, cluster, PostgreSQL, tunefleet image
#   ci/k8s-cluster.sh env    # prints the TUNEFLEET_TEST_* variables the test reads (to eval)
#   ci/k8s-cluster.sh down   # stops every daemon it started, unmounts; the cache stays
#
# Two places:
#   CACHE ($TUNEFLEET_K8S_CACHE, default /var/cache/tunefleet-k8s): Debian's kubernetes source,
#     the Go build (~1.3 GB of Go cache; 10-15 min cold on 2 cores, seconds warm), the binaries,
#     docker's images and build cache. Kept across runs; a cold (empty) one still works.
#   STATE ($TUNEFLEET_K8S_STATE, default .k8s-ci/ in the repository): this run's cluster (etcd,
#     certificates, kubeconfig, kubelet), the throwaway PostgreSQL, pid files and logs. `up`
#     starts from an empty one.
#
# Pods reach the machine at the docker bridge's address (172.17.0.1): a throwaway PostgreSQL
# listens there (the machine's own listens on 127.0.0.1 only). The tunefleet image is built from
# this repository's Dockerfile on a local base (debootstrap + Debian's Python, PYTHON_IMAGE) and
# used with imagePullPolicy Never.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${TUNEFLEET_K8S_CACHE:-/var/cache/tunefleet-k8s}
STATE=${TUNEFLEET_K8S_STATE:-$REPO/.k8s-ci}
IMAGE=${TUNEFLEET_K8S_IMAGE:-tunefleet:ci}
BASE_IMAGE=local/python:3.11-bookworm
PG_PORT=${TUNEFLEET_K8S_PG_PORT:-25432}
BRIDGE_IP=172.17.0.1
export GOCACHE=$CACHE/gocache GOPATH=$CACHE/gopath GO111MODULE=off CGO_ENABLED=0
SRC=$GOPATH/src/k8s.io/kubernetes # k8s 1.20 builds in GOPATH mode
BIN=$CACHE/bin
export DOCKER_HOST=unix://$STATE/docker.sock
export PATH=$BIN:$PATH
KUBECTL="$BIN/kubectl --kubeconfig=$STATE/kubeconfig"
log() { echo "[k8s-cluster $(date +%T)] $*"; }
timed() { local t0=$SECONDS; "$@"; log "$1: $((SECONDS - t0)) s"; }

install() {
  local pkgs="docker.io containerd runc iptables debootstrap etcd-server golang-go gcc libc6-dev
    golang-github-modern-go-reflect2-dev openssl curl ca-certificates"
  local have
  # shellcheck disable=SC2086
  have=$(dpkg-query -W -f='${db:Status-Abbrev}\n' $pkgs 2>/dev/null | grep -c '^ii' || true)
  # shellcheck disable=SC2086
  if [ "$have" -ne "$(echo $pkgs | wc -w)" ]; then
    log "apt packages"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  fi
  mkdir -p "$BIN"
  # kubectl 1.20 from kubernetes-client: only its binary (the package may conflict with another
  # kubectl on the machine)
  if [ ! -x "$BIN/kubectl" ]; then
    (cd "$CACHE" && apt-get download -qq kubernetes-client && dpkg-deb -x kubernetes-client_*.deb kc \
      && cp kc/usr/bin/kubectl "$BIN/kubectl" && rm -rf kc kubernetes-client_*.deb)
  fi
  # Debian's source package, through a private apt configuration with deb-src lines
  if [ ! -d "$CACHE/src/kubernetes-1.20.2" ]; then
    log "Debian source package kubernetes"
    mkdir -p "$CACHE/apt/parts" "$CACHE/apt/lists/partial" "$CACHE/apt/cache/archives/partial" "$CACHE/src"
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$CACHE/apt/parts/src.sources"
    cat >"$CACHE/apt/apt.conf" <<EOF
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$CACHE/apt/parts";
Dir::State::Lists "$CACHE/apt/lists";
Dir::Cache "$CACHE/apt/cache";
EOF
    APT_CONFIG=$CACHE/apt/apt.conf apt-get update -qq
    (cd "$CACHE/src" && APT_CONFIG=$CACHE/apt/apt.conf apt-get source -qq --download-only kubernetes 2>/dev/null \
      && tar xzf kubernetes_*.orig.tar.gz && rm -f kubernetes_*)
  fi
}

build() {
  local c missing=""
  for c in kube-apiserver kube-controller-manager kube-scheduler kubelet; do
    [ -x "$BIN/$c" ] || missing="$missing $c"
  done
  if [ -n "$missing" ]; then
    mkdir -p "$GOPATH/src/k8s.io"
    [ -L "$SRC" ] || ln -s "$CACHE/src/kubernetes-1.20.2" "$SRC"
    cd "$SRC"
    if [ ! -f "$CACHE/src/.patched" ]; then
      log "patches"
      # 1. the vendored reflect2 1.0.1 crashes under Go >= 1.18: Debian's 1.0.2 instead
      local v=vendor/github.com/modern-go/reflect2
      rm -f $v/*.go $v/*.s
      cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go /usr/share/gocode/src/github.com/modern-go/reflect2/*.s $v/
      # 2. this kind of VM refuses a negative oom_score_adj, even for root (runc then fails with
      #    "can't get final child's PID from pipe"): dockershim never asks for one
      sed -i 's/defaultSandboxOOMAdj int = -998/defaultSandboxOOMAdj int = 0/' pkg/kubelet/dockershim/docker_sandbox.go
      python3 - pkg/kubelet/dockershim/helpers_linux.go <<'EOF'
import sys
p = sys.argv[1]; s = open(p).read()
old = '\t\t\tcreateConfig.HostConfig.OomScoreAdj = int(rOpts.OomScoreAdj)\n'
assert old in s, 'patch target not found'
s = s.replace(old, '\t\t\tif rOpts.OomScoreAdj >= 0 {\n\t\t\t\tcreateConfig.HostConfig.OomScoreAdj = int(rOpts.OomScoreAdj)\n\t\t\t}\n')
open(p, 'w').write(s)
EOF
      grep -q 'defaultSandboxOOMAdj int = 0' pkg/kubelet/dockershim/docker_sandbox.go
      touch "$CACHE/src/.patched"
    fi
    # 3. pkg/generated/openapi is generated by `make` and not in the tarball
    if [ ! -f pkg/generated/openapi/zz_generated.openapi.go ]; then
      log "openapi-gen"
      go build -o "$BIN/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
      local dirs
      dirs=$(find -H . \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune -o -type f -name '*.go' -print \
        | grep -v -e '^./staging/src/k8s.io/code-generator/' -e '^./staging/src/k8s.io/sample-apiserver/' \
        | xargs grep -l '^// *+k8s:' | xargs grep -l '+k8s:openapi-gen=' \
        | sed -e 's|^./staging/src|vendor|' -e 's|^./||' -e 's|/[^/]*$||' | LC_ALL=C sort -u \
        | sed 's|^|k8s.io/kubernetes/|' | paste -sd, -)
      "$BIN/openapi-gen" --logtostderr -i "$dirs" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
        -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$CACHE/openapi-violations.report"
    fi
    local ld="" p
    for p in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
      ld="$ld -X $p.gitVersion=v1.20.2 -X $p.gitMajor=1 -X $p.gitMinor=20 -X $p.gitTreeState=clean"
    done
    for c in $missing; do
      log "go build $c (10-15 min for all four from a cold cache)"
      # 4. providerless: no cloud providers (smaller, and builds with Debian's Go)
      go build -p 2 -tags providerless -trimpath -ldflags "-s -w $ld" -o "$BIN/$c.tmp" ./cmd/$c
      mv "$BIN/$c.tmp" "$BIN/$c"
    done
    cd "$REPO"
  fi
}

start_bg() {
  local n=$1
  shift
  nohup "$@" >"$STATE/$n.log" 2>&1 &
  echo $! >"$STATE/$n.pid"
}
wait_for() {
  local what=$1 t=$2 i
  shift 2
  for i in $(seq 1 "$t"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  log "TIMEOUT after ${t}s: $what (logs in $STATE)"
  return 1
}

dockerd_up() {
  docker info >/dev/null 2>&1 && return 0
  mkdir -p "$CACHE/docker-data" "$STATE/docker-exec"
  start_bg dockerd dockerd --data-root "$CACHE/docker-data" --exec-root "$STATE/docker-exec" -H "$DOCKER_HOST" \
    --pidfile "$STATE/dockerd.pidfile" --bip "$BRIDGE_IP/16"
  wait_for dockerd 90 docker info
}

images() {
  if [ ! -x "$CACHE/pause/pause" ]; then # the pod sandbox's process, from the source's pause.c
    mkdir -p "$CACHE/pause"
    gcc -Os -static -DVERSION=3.4.1 -o "$CACHE/pause/pause" "$CACHE/src/kubernetes-1.20.2/build/pause/linux/pause.c"
  fi
  dockerd_up
  # (an empty image, from an import that was cut short, is made again)
  if [ "$(docker image inspect -f '{{.Size}}' local/pause:3.4.1 2>/dev/null || echo 0)" -eq 0 ]; then
    tar -C "$CACHE/pause" -c pause | docker import -c 'ENTRYPOINT ["/pause"]' - local/pause:3.4.1 >/dev/null
  fi
  if [ "$(docker image inspect -f '{{.Size}}' "$BASE_IMAGE" 2>/dev/null || echo 0)" -eq 0 ]; then
    # The base for the Dockerfile's PYTHON_IMAGE: Debian's Python 3.11 with venv, and this
    # machine's CA certificates (its TLS egress needs them for pip inside `docker build`).
    log "debootstrap $BASE_IMAGE"
    local root=$CACHE/rootfs mirror
    mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    rm -rf "$root"
    debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
      bookworm "$root" "$mirror" >"$CACHE/debootstrap.log"
    if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
      cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
      chroot "$root" update-ca-certificates >/dev/null
    fi
    rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
    tar -C "$root" -c . | docker import \
      -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$root"
  fi
  # tunefleet from this repository's Dockerfile (the legacy builder: BuildKit would fetch the
  # dockerfile frontend from Docker Hub); docker's layer cache lives in CACHE. The build stage is
  # tagged too, so that pruning the images of earlier runs keeps its cached layers.
  log "docker build $IMAGE (PYTHON_IMAGE=$BASE_IMAGE)"
  local build=(build -q --build-arg PYTHON_IMAGE="$BASE_IMAGE")
  DOCKER_BUILDKIT=0 docker "${build[@]}" --target build -t "$IMAGE-build" "$REPO" >/dev/null
  DOCKER_BUILDKIT=0 docker "${build[@]}" -t "$IMAGE" "$REPO" >/dev/null
  # Images of earlier runs (untagged by this build): only the newest are kept.
  docker image prune -f >/dev/null
}

cluster_up() {
  mkdir -p "$STATE/pki" "$STATE/etcd"
  openssl genrsa -out "$STATE/sa.key" 2048 2>/dev/null
  openssl rsa -in "$STATE/sa.key" -pubout -out "$STATE/sa.pub" 2>/dev/null
  local token node_ip
  token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "$token,admin,admin,system:masters" >"$STATE/tokens.csv"
  cat >"$STATE/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://127.0.0.1:16443", insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: "$token"}}]
contexts: [{name: local, context: {cluster: local, user: admin, namespace: default}}]
current-context: local
EOF
  chmod 600 "$STATE/kubeconfig"
  start_bg etcd etcd --name ci --data-dir "$STATE/etcd" --listen-client-urls http://127.0.0.1:23790 \
    --advertise-client-urls http://127.0.0.1:23790 --listen-peer-urls http://127.0.0.1:23800 \
    --initial-advertise-peer-urls http://127.0.0.1:23800 --initial-cluster ci=http://127.0.0.1:23800
  wait_for etcd 60 curl -sf http://127.0.0.1:23790/health
  # TTLAfterFinished is alpha (off) in 1.20: on, so that a finished Job's TTL clean-up is real.
  local gates=TTLAfterFinished=true
  start_bg kube-apiserver kube-apiserver --etcd-servers=http://127.0.0.1:23790 \
    --bind-address=127.0.0.1 --secure-port=16443 --insecure-port=0 --advertise-address=127.0.0.1 \
    --cert-dir="$STATE/pki" --token-auth-file="$STATE/tokens.csv" --authorization-mode=Node,RBAC \
    --service-account-key-file="$STATE/sa.pub" --service-account-signing-key-file="$STATE/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range=10.0.0.0/24 --allow-privileged=true \
    --kubelet-preferred-address-types=InternalIP,Hostname --feature-gates=$gates
  wait_for kube-apiserver 180 curl -sfk -H "Authorization: Bearer $token" https://127.0.0.1:16443/readyz
  start_bg kube-controller-manager kube-controller-manager --kubeconfig="$STATE/kubeconfig" --leader-elect=false \
    --service-account-private-key-file="$STATE/sa.key" --root-ca-file="$STATE/pki/apiserver.crt" \
    --use-service-account-credentials=false --bind-address=127.0.0.1 --port=0 --secure-port=10257 \
    --feature-gates=$gates
  start_bg kube-scheduler kube-scheduler --kubeconfig="$STATE/kubeconfig" --leader-elect=false \
    --bind-address=127.0.0.1 --port=0 --secure-port=10259
  # 5. the node IP must not be loopback: the primary interface's address (a route lookup only)
  node_ip=${NODE_IP:-$(ip -4 route get 1.1.1.1 | sed -n 's/.* src \([0-9.]*\).*/\1/p')}
  start_bg kubelet kubelet --kubeconfig="$STATE/kubeconfig" --container-runtime=docker --docker-endpoint="$DOCKER_HOST" \
    --pod-infra-container-image=local/pause:3.4.1 --root-dir="$STATE/kubelet" --cert-dir="$STATE/kubelet-pki" \
    --hostname-override=ci-node --node-ip="$node_ip" --address="$node_ip" --healthz-port=10248 --read-only-port=0 \
    --cgroup-driver=cgroupfs --fail-swap-on=false --make-iptables-util-chains=false \
    --image-gc-high-threshold=100 --eviction-hard='' --register-node=true --v=1
  wait_for "node Ready" 180 sh -c "$KUBECTL get node ci-node -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -q True"
  wait_for "default serviceaccount" 90 $KUBECTL -n default get serviceaccount default
}

postgres_up() {
  # A throwaway server on the bridge address, trusting the bridge's network (pods) and this
  # machine (whose connections to the bridge address come from its own addresses).
  local bin data=$STATE/pg
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
  mkdir -p "$data"
  chown postgres "$data"
  runuser -u postgres -- "$bin/initdb" -D "$data/data" -U postgres --auth=trust -E UTF8 >/dev/null
  cat >>"$data/data/pg_hba.conf" <<EOF
host all all 172.17.0.0/16 trust
host all all samehost trust
EOF
  runuser -u postgres -- "$bin/pg_ctl" -D "$data/data" -l "$data/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1,$BRIDGE_IP -p $PG_PORT -k $data -c max_connections=200" start >/dev/null
  "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres tunefleet_k8s
}

env_lines() {
  echo "export TUNEFLEET_TEST_KUBECONFIG=$STATE/kubeconfig"
  echo "export TUNEFLEET_TEST_K8S_IMAGE=$IMAGE"
  echo "export TUNEFLEET_TEST_K8S_STORAGE=postgresql://postgres@$BRIDGE_IP:$PG_PORT/tunefleet_k8s"
  echo "export TUNEFLEET_TEST_K8S_KUBECTL=$BIN/kubectl"
}

up() {
  down >/dev/null 2>&1 || true
  rm -rf "$STATE"
  mkdir -p "$CACHE" "$STATE"
  chmod 755 "$STATE" # the PostgreSQL server runs as user postgres, under it
  timed install
  timed build
  timed images
  timed cluster_up
  timed postgres_up
  env_lines >"$STATE/env"
  log "up: kubeconfig $STATE/kubeconfig; eval \"\$($0 env)\" for the test's variables"
}

down() {
  local n pid bin
  for n in kubelet kube-scheduler kube-controller-manager kube-apiserver etcd; do
    if [ -f "$STATE/$n.pid" ]; then
      pid=$(cat "$STATE/$n.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$STATE/$n.pid"
    fi
  done
  if [ -f "$STATE/pg/data/postmaster.pid" ]; then
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
    runuser -u postgres -- "$bin/pg_ctl" -D "$STATE/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  if [ -f "$STATE/dockerd.pid" ]; then
    local ids
    ids=$(docker ps -aq --filter label=io.kubernetes.pod.uid 2>/dev/null || true)
    # shellcheck disable=SC2086
    [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
  fi
  if [ -d "$STATE" ]; then
    grep " $STATE/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount 2>/dev/null || true
  fi
  if [ -f "$STATE/dockerd.pid" ]; then
    pid=$(cat "$STATE/dockerd.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$STATE/dockerd.pid"
  fi
  log "down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) env_lines ;;
  install | build | images) mkdir -p "$CACHE" "$STATE"; timed "$1" ;;
  *) echo "usage: $0 up|env|down|install|build|images" >&2; exit 2 ;;
esac
