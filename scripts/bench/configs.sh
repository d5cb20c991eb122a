# Configuration writers for scripts/bench.sh (sourced; not run on its own). Each prints one
# file's text on stdout. Every listener is on 127.0.0.1; every proxy runs one worker (nginx
# worker_processes 1, HAProxy nbthread 1, gateways --worker-threads 1), so the comparison is
# per core.

# The parts of an nginx config every instance shares. $1: its directory; $2: worker count;
# $3: worker_connections.
nginx_head() {
  cat <<EOF2
daemon off;
worker_processes $2;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections $3; }
http {
  client_body_temp_path $1/tmp/body;
  proxy_temp_path $1/tmp/proxy;
  fastcgi_temp_path $1/tmp/fastcgi;
  uwsgi_temp_path $1/tmp/uwsgi;
  scgi_temp_path $1/tmp/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_header_timeout 300s;
EOF2
}

# The service: answers "ok" to everything. $1 dir, $2 port.
nginx_upstream_conf() {
  nginx_head "$1" auto 4096
  cat <<EOF2
  access_log off;
  server {
    listen 127.0.0.1:$2 reuseport backlog=4096;
    location / { default_type text/plain; return 200 "ok\n"; }
  }
}
EOF2
}

# Client sidecar: plain HTTP in, HTTP/1.1 over mTLS (TLS 1.3, keep-alive pool) to $3.
# $1 dir (holds svid/), $2 listen port, $3 server sidecar port, $4 the server's DNS name.
nginx_client_conf() {
  nginx_head "$1" 1 4096
  cat <<EOF2
  access_log $1/access.log combined buffer=64k flush=1s;
  upstream server_sidecar {
    server 127.0.0.1:$3;
    keepalive 1024;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:$2 backlog=4096;
    location / {
      proxy_pass https://server_sidecar;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_certificate $1/svid/svid.pem;
      proxy_ssl_certificate_key $1/svid/key.pem;
      proxy_ssl_trusted_certificate $1/svid/bundle.pem;
      proxy_ssl_verify on;
      proxy_ssl_verify_depth 3;
      proxy_ssl_name $4;
      proxy_ssl_server_name on;
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_session_reuse off;
    }
  }
}
EOF2
}

# Server sidecar: mTLS in (client certificate required and verified), plain HTTP/1.1 out with a
# keep-alive pool. $1 dir (holds svid/), $2 listen port, $3 upstream port, $4 worker_connections.
nginx_server_conf() {
  nginx_head "$1" 1 "$4"
  cat <<EOF2
  log_format mtls '\$remote_addr "\$request" \$status client_verify=\$ssl_client_verify';
  access_log $1/access.log mtls buffer=64k flush=1s;
  upstream app {
    server 127.0.0.1:$3;
    keepalive 1024;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:$2 ssl backlog=4096;
    ssl_certificate $1/svid/svid.pem;
    ssl_certificate_key $1/svid/key.pem;
    ssl_client_certificate $1/svid/bundle.pem;
    ssl_verify_client on;
    ssl_verify_depth 3;
    ssl_protocols TLSv1.3;
    ssl_session_tickets off;
    ssl_session_cache off;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF2
}

# The parts of a HAProxy config both sides share. $1 maxconn.
haproxy_head() {
  cat <<EOF2
global
  nbthread 1
  maxconn $1
  log stdout format raw local0 info
  ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets
  ssl-default-server-options ssl-min-ver TLSv1.3 no-tls-tickets
  tune.ssl.cachesize 0

defaults
  mode http
  log global
  option httplog
  maxconn $1
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-request 300s
  timeout http-keep-alive 300s
EOF2
}

# Client sidecar: plain HTTP in, HTTP/1.1 over mTLS to $3, idle server connections reused.
# $1 dir (holds svid/crt.pem = chain + key, svid/bundle.pem), $2 listen port, $3 server port,
# $4 the server's DNS name.
haproxy_client_conf() {
  haproxy_head 4096
  cat <<EOF2

frontend plain_in
  bind 127.0.0.1:$2
  default_backend server_sidecar

backend server_sidecar
  http-reuse always
  server s1 127.0.0.1:$3 ssl crt $1/svid/crt.pem ca-file $1/svid/bundle.pem verify required verifyhost $4 sni str($4) no-ssl-reuse
EOF2
}

# Server sidecar: mTLS in with a verified client certificate, plain HTTP/1.1 out, reused.
# $1 dir, $2 listen port, $3 upstream port, $4 maxconn.
haproxy_server_conf() {
  haproxy_head "$4"
  cat <<EOF2

frontend mtls_in
  bind 127.0.0.1:$2 ssl crt $1/svid/crt.pem ca-file $1/svid/bundle.pem verify required
  log-format "%ci \"%r\" %ST client_cert=%[ssl_c_used] verify=%[ssl_c_verify]"
  default_backend app

backend app
  http-reuse always
  server app 127.0.0.1:$3
EOF2
}

# A meshgate gateway with an inbound listener. $1 SPIFFE ID, $2 CA port, $3 inbound port,
# $4 upstream port, $5 admin port, $6 max_connections. The memory run holds idle connections
# longer than the default header_read_timeout (10 s), so the timeouts are those of the nginx and
# HAProxy configs (300 s).
gateway_inbound_conf() {
  cat <<EOF2
spiffe_id = "$1"
state_dir = "state"

[ca]
url = "https://127.0.0.1:$2"

[inbound]
listen = "127.0.0.1:$3"
upstream = "http://127.0.0.1:$4"
policy = ["policy.toml"]

[admin]
listen = "127.0.0.1:$5"

[limits]
max_connections = $6
header_read_timeout = "300s"
idle_timeout = "300s"

[audit]
path = "audit.jsonl"
EOF2
}

# A meshgate gateway with one outbound route. $1 SPIFFE ID, $2 CA port, $3 outbound port,
# $4 target inbound port, $5 expected peer, $6 admin port.
gateway_outbound_conf() {
  cat <<EOF2
spiffe_id = "$1"
state_dir = "state"

[ca]
url = "https://127.0.0.1:$2"

[[outbound]]
name = "payments"
listen = "127.0.0.1:$3"
target = "127.0.0.1:$4"
expected_peer = "$5"

[admin]
listen = "127.0.0.1:$6"

[limits]
max_connections = 4096

[audit]
path = "audit.jsonl"
EOF2
}

# The payments policy: shop may GET the benchmark path. $1 payments ID, $2 shop ID, $3 path.
policy_conf() {
  cat <<EOF2
service = "$1"
mode = "enforce"

[[allow]]
name = "shop calls the benchmark path"
from = ["$2"]
methods = ["GET"]
paths = ["$3"]
EOF2
}
