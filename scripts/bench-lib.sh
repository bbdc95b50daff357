# Sourced by the benchmark scripts (bench.sh, bench-scale.sh, bench-wan.sh, bench-million.sh,
# bench-agent.sh, bench-rss.sh):
# the tools they compare against, timing, and a private nginx.

# bench_tools TOOL...: installs from Debian what is missing among TOOL...
# (and GNU time), naming the packages that hold them.
bench_tools() {
  local missing=() tool pkgs
  for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  [ -x /usr/bin/time ] || missing+=(time)
  [ ${#missing[@]} -gt 0 ] || return 0
  pkgs=$(printf '%s\n' "${missing[@]}" | sed -e 's/^aria2c$/aria2/' -e 's/^tc$/iproute2/' -e 's/^ip$/iproute2/' | sort -u)
  # shellcheck disable=SC2086 # one word per package
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null
}

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
# timed NAME CMD...: wall seconds and peak RSS (KiB) of CMD into NAME.time
timed() { local name=$1; shift; /usr/bin/time -f "%e %M" -o "$name.time" "$@"; }
secs() { cut -d' ' -f1 "$1.time"; }
rss_mib() { awk '{ printf "%.0f", $2 / 1024 }' "$1.time"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
# median VALUE...: the middle value (the mean of the two middle ones).
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%.2f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# Over the rounds NAME.1 ... NAME.$ROUNDS timed by `rounds`:
# msecs NAME: the median time; mratio A B: the median of the rounds'
# A/B ratios, with their range; mrss NAME: the largest peak RSS, MiB.
msecs() { local r v=(); for r in $(seq "$ROUNDS"); do v+=("$(secs "$1.$r")"); done; median "${v[@]}"; }
mratio() {
  local r v=()
  for r in $(seq "$ROUNDS"); do v+=("$(ratio "$(secs "$1.$r")" "$(secs "$2.$r")")"); done
  printf '%s (%s-%s)' "$(median "${v[@]}")" "$(printf '%s\n' "${v[@]}" | sort -g | head -1)" "$(printf '%s\n' "${v[@]}" | sort -g | tail -1)"
}
mrss() { local r m=0 v; for r in $(seq "$ROUNDS"); do v=$(rss_mib "$1.$r"); [ "$v" -gt "$m" ] && m=$v; done; echo "$m"; }
# rounds A B: runs the bench functions A and B (each given its timing
# name) $ROUNDS times, alternating which goes first: these VMs drift by a
# quarter within minutes, so one pair of runs proves little.
rounds() {
  local r
  for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then "$1" "$1.$r"; "$2" "$2.$r"; else "$2" "$2.$r"; "$1" "$1.$r"; fi
  done
}
# json FILE FIELD: an integer field of a one-line JSON document.
json() { sed -E "s/.*\"$2\":([0-9]+).*/\1/" "$1"; }

# nginx_conf WORK SERVER: writes WORK/nginx/nginx.conf, an nginx for one
# benchmark run that keeps everything (pid, logs, temporary files) under
# WORK/nginx and serves the server block SERVER.
nginx_conf() {
  local work=$1 server=$2
  mkdir -p "$work/nginx/tmp"
  cat >"$work/nginx/nginx.conf" <<CONF
worker_processes 2;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  client_body_temp_path $work/nginx/tmp;
  proxy_temp_path $work/nginx/tmp;
  fastcgi_temp_path $work/nginx/tmp;
  uwsgi_temp_path $work/nginx/tmp;
  scgi_temp_path $work/nginx/tmp;
  $server
}
CONF
}
