#!/usr/bin/env bash
# N replicas of the app behind HAProxy, one PACS, one shared store (docs/deploy.md):
#
#   scripts/replicas.sh <DICOMweb URL> --shared DIR [--replicas N] [--port P] [--host H] [--conf KEY VALUE ...]
#
# The balancer listens on H:P (default 127.0.0.1:8000); replica i (1..N, default N=2) on 127.0.0.1:P+i,
# reached only through the balancer. Each replica is the unchanged app (monailabel start_server --app
# apps/sam2_3d) with:
#   --conf model_dir DIR/model   fine-tuned versions, the training lock and SAM 2 confidences, shared: whichever
#                                replica trains, every replica serves the new version at its next request
#   --conf replica true          sessions are recorded in DIR/model too, so a client whose image moved to
#                                another replica (one died) is told so (session_restarted)
#   MONAI_LABEL_SESSION_PATH     DIR/sessions: Slicer's uploaded volumes, readable by every replica
#   MONAI_LABEL_DICOMWEB_CACHE_PATH  DIR/cache/replica-PORT: each replica's own copy of the series it serves
# Logs: DIR/logs/replica-PORT.log (one "request ..." line per request) and DIR/logs/haproxy.log; pids in
# DIR/run/, and HAProxy's stats socket DIR/run/haproxy.sock (echo "show stat" | socat - DIR/run/haproxy.sock).
# Runs in the foreground; Ctrl-C (or SIGTERM) stops the balancer and every replica. A replica that dies is
# not restarted here: HAProxy moves its images to the others (restart it with DIR/run/replica-PORT.cmd).
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: scripts/replicas.sh <DICOMweb URL> --shared DIR [--replicas N] [--port P] [--host H] [--conf KEY VALUE ...]"
studies=${1:?$usage}
shift
case "$studies" in
  http://*|https://*) ;;
  *) echo "replicas.sh: the replicas share one PACS: give its DICOMweb URL, not $studies (a local studies folder's" \
          "datastore file is written by each server process on its own)" >&2; exit 2 ;;
esac
shared="" replicas=2 port=8000 host=${SAM2_3D_HOST:-127.0.0.1} extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --shared) shared=${2:?$usage}; shift 2 ;;
    --replicas) replicas=${2:?$usage}; shift 2 ;;
    --port) port=${2:?$usage}; shift 2 ;;
    --host) host=${2:?$usage}; shift 2 ;;
    --conf) extra+=(--conf "${2:?$usage}" "${3:?$usage}"); shift 3 ;;
    *) echo "replicas.sh: unknown argument $1; $usage" >&2; exit 2 ;;
  esac
done
[ -n "$shared" ] || { echo "replicas.sh: --shared DIR is required; $usage" >&2; exit 2; }
case "$replicas" in ''|*[!0-9]*|0) echo "replicas.sh: --replicas must be a positive integer" >&2; exit 2 ;; esac
haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)
[ -x "$haproxy" ] || { echo "replicas.sh: HAProxy is not installed (scripts/setup_system.sh: Debian package haproxy)" >&2; exit 1; }
[ -x .venv/bin/monailabel ] || scripts/setup.sh serve
. .venv/bin/activate
shared=$(mkdir -p "$shared" && cd "$shared" && pwd)
mkdir -p "$shared/model" "$shared/sessions" "$shared/logs" "$shared/run" "$shared/cache"

pids=()
stop_all() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop_all INT TERM EXIT

servers=""
for i in $(seq 1 "$replicas"); do
  p=$((port + i))
  cmd=(monailabel start_server --app apps/sam2_3d --studies "$studies" --host 127.0.0.1 --port "$p"
       --conf model_dir "$shared/model" --conf replica true "${extra[@]}")
  # each replica's name (host:port) said explicitly: one inherited from the caller's environment would name
  # every replica alike (the training lock's holder, session_restarted's "held on replica ...")
  name="$(hostname):$p"
  printf '%q ' env SAM2_3D_REPLICA="$name" MONAI_LABEL_SESSION_PATH="$shared/sessions" \
    MONAI_LABEL_DICOMWEB_CACHE_PATH="$shared/cache/replica-$p" "${cmd[@]}" > "$shared/run/replica-$p.cmd"
  SAM2_3D_REPLICA="$name" MONAI_LABEL_SESSION_PATH="$shared/sessions" MONAI_LABEL_DICOMWEB_CACHE_PATH="$shared/cache/replica-$p" \
    PYTHONUNBUFFERED=1 "${cmd[@]}" > "$shared/logs/replica-$p.log" 2>&1 &
  pids+=($!)
  echo $! > "$shared/run/replica-$p.pid"
  servers+="    server replica-$p 127.0.0.1:$p check"$'\n'
done
sed -e "s/@BIND@/$host:$port/" -e "s|@RUN@|$shared/run|" -e "/@SERVERS@/{r /dev/stdin" -e "d}" scripts/haproxy.cfg.template \
  <<< "${servers%$'\n'}" > "$shared/run/haproxy.cfg"
"$haproxy" -c -q -f "$shared/run/haproxy.cfg"
"$haproxy" -db -f "$shared/run/haproxy.cfg" > "$shared/logs/haproxy.log" 2>&1 &
pids+=($!)
echo $! > "$shared/run/haproxy.pid"
echo "replicas.sh: balancer http://$host:$port -> $replicas replicas on 127.0.0.1:$((port + 1))..$((port + replicas)); logs in $shared/logs"
# until stopped; a dead replica is the balancer's business, a dead balancer ends everything
wait "${pids[-1]}"
