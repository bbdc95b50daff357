# Sourced by the benchmark scripts: writes $1/nginx/nginx.conf, an nginx
# for one benchmark run that keeps everything (pid, logs, temporary files)
# under $1/nginx and serves the server block given as $2.
# Usage: nginx_conf "$WORK" "server { listen 127.0.0.1:$PORT; ... }"
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
