#!/usr/bin/env bash
# What the test suite needs outside Python, for both `make test` and `.ci/run` (one script, so they
# cannot drift): a Redis answering at MARS_TEST_REDIS_URL (default 127.0.0.1:6379) and Debian's
# chromium + chromedriver. Missing pieces are installed when this runs as root with apt-get (and a Redis
# is started); otherwise it stops at once with one line naming the command to run.
set -euo pipefail

url="${MARS_TEST_REDIS_URL:-redis://127.0.0.1:6379/0}"
hostport="${url#*://}"; hostport="${hostport##*@}"; hostport="${hostport%%/*}"; hostport="${hostport%%\?*}"
host="${hostport%%:*}"; port="${hostport##*:}"
[ "$port" = "$hostport" ] && port=6379

redis_answers() {
  # PING over bash's /dev/tcp: needs no redis-cli.
  { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null || return 1
  printf 'PING\r\n' >&3
  local reply=""
  read -r -t 2 reply <&3 || true
  exec 3>&- 3<&-
  [[ "$reply" == *PONG* || "$reply" == *NOAUTH* ]]
}

missing=()
redis_answers || missing+=(redis)
{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

packages=()
for m in "${missing[@]}"; do
  case "$m" in
    redis) command -v redis-server >/dev/null || packages+=(redis-server) ;;
    chromium) packages+=(chromium chromium-driver) ;;
  esac
done

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  hint="sudo apt-get install -y ${packages[*]:-}"
  [[ " ${missing[*]} " == *" redis "* ]] && hint="${hint% } && redis-server --daemonize yes --port $port"
  [ ${#packages[@]} -eq 0 ] && hint="redis-server --daemonize yes --port $port"
  echo "make test needs ${missing[*]} (not installable from here): run: ${hint# }" >&2
  exit 1
fi

if [ ${#packages[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${packages[@]}" >/dev/null
fi
if [[ " ${missing[*]} " == *" redis "* ]]; then
  case "$host" in 127.0.0.1|localhost) ;; *)
    echo "no Redis answers at $host:$port and it is not local: start one there or set MARS_TEST_REDIS_URL" >&2
    exit 1 ;;
  esac
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no >/dev/null
  for _ in $(seq 50); do redis_answers && break; sleep 0.1; done
  redis_answers || { echo "redis-server did not answer on port $port: see its log" >&2; exit 1; }
fi
