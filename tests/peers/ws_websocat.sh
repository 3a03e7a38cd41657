#!/usr/bin/env bash
# The Gatehouse WebSocket API (docs/websocket-protocol.md) spoken through websocat, a
# command-line WebSocket peer built on another WebSocket stack than the server's.
#
#   ws_websocat.sh --base http://127.0.0.1:PORT --user U --password P [--gate G]
#
# Logs in with curl, then feeds websocat one frame at a time (ping before auth, auth,
# subscribe, a frame that is not JSON, a message with an unknown field, an unknown type, ping)
# and checks the answers: pong, auth_ok, snapshot, three errors, and a pong after them (the
# connection survived the bad frames). Also checks that an upgrade without the `gatehouse.v1`
# subprotocol is refused. Exits 0 when all hold; otherwise 1, printing what websocat received.
# Every step is bounded by `timeout`.
#
# Needs websocat 1.14.1 (`cargo install --locked websocat --version 1.14.1`) and curl.
set -euo pipefail

base="" user="" password="" gate=""
while [ $# -gt 0 ]; do
  case "$1" in
    --base) base="${2%/}"; shift 2 ;;
    --base=*) base="${1#--base=}"; base="${base%/}"; shift ;;
    --user) user="$2"; shift 2 ;;
    --user=*) user="${1#--user=}"; shift ;;
    --password) password="$2"; shift 2 ;;
    --password=*) password="${1#--password=}"; shift ;;
    --gate) gate="$2"; shift 2 ;;
    --gate=*) gate="${1#--gate=}"; shift ;;
    *) echo "ws_websocat: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$base" ] || [ -z "$user" ] || [ -z "$password" ]; then
  echo "usage: $0 --base http://HOST:PORT --user U --password P [--gate G]" >&2
  exit 2
fi

fail() {
  echo "ws_websocat: FAILED: $*" >&2
  exit 1
}

command -v websocat >/dev/null || fail "websocat is not installed"
echo "using $(websocat --version)" >&2
ws_url="ws://${base#http://}/api/v1/ws"

# A token over REST (the username and password hold no quotes in the demo; JSON-escape anyway).
json_string() { printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')"; }
login=$(curl -sS --max-time 10 -X POST -H 'Content-Type: application/json' \
  -d "{\"username\":$(json_string "$user"),\"password\":$(json_string "$password")}" \
  "$base/api/v1/auth/login") || fail "login request failed"
token=$(printf '%s' "$login" | sed -nE 's/.*"access_token" *: *"([^"]+)".*/\1/p')
[ -n "$token" ] || fail "no access_token in the login answer: $login"

if [ -z "$gate" ]; then
  # The first gate the caller may read.
  gates=$(curl -sS --max-time 10 -H "Authorization: Bearer $token" "$base/api/v1/gates") \
    || fail "GET /api/v1/gates failed"
  gate=$(printf '%s' "$gates" | grep -oE '"id" *: *"[^"]+"' | head -n 1 | sed -E 's/.*"([^"]+)"$/\1/')
  [ -n "$gate" ] || fail "no gate in GET /api/v1/gates: $gates"
fi

# Sends each argument as one text frame, 0.3 s apart, then keeps the connection open for a
# moment so that the last answers arrive. Prints what the server sent, one message a line.
converse() {
  {
    for frame in "$@"; do
      sleep 0.3
      printf '%s\n' "$frame"
    done
    sleep 1.5
  } | timeout 15 websocat --text --protocol gatehouse.v1 "$ws_url"
}

out=$(converse \
  '{"type":"ping","id":"p0"}' \
  "{\"type\":\"auth\",\"id\":\"a1\",\"token\":\"$token\"}" \
  "{\"type\":\"subscribe\",\"id\":\"s1\",\"gates\":[\"$gate\"]}" \
  'this is not JSON' \
  '{"type":"ping","id":"e1","colour":"red"}' \
  '{"type":"dance","id":"e2"}' \
  '{"type":"ping","id":"p1"}') || fail "websocat exited with $? after receiving:
$out"

# The message of type $1 whose id is $2 ("" for none); key order and spacing are free.
has() {
  local lines
  lines=$(printf '%s\n' "$out" | grep -E "\"type\" *: *\"$1\"") || return 1
  if [ -n "$2" ]; then
    printf '%s\n' "$lines" | grep -qE "\"id\" *: *\"$2\"" || return 1
  fi
  if [ -n "${3:-}" ]; then
    printf '%s\n' "$lines" | grep -qE "$3" || return 1
  fi
}

missing=()
has pong p0 || missing+=("pong p0 (ping before auth)")
has auth_ok a1 '"role" *: *"' || missing+=("auth_ok a1")
has snapshot s1 "\"gate\" *: *\"$gate\"" || missing+=("snapshot s1 with $gate")
has error "" '"code" *: *"malformed_json"' || missing+=("error malformed_json (not JSON)")
has error e1 '"code" *: *"invalid_message"' || missing+=("error invalid_message e1 (unknown field)")
has error e2 '"code" *: *"unknown_type"' || missing+=("error unknown_type e2")
has pong p1 || missing+=("pong p1 (after the bad frames)")
if [ ${#missing[@]} -gt 0 ]; then
  printf 'websocat received:\n%s\n' "$out" >&2
  fail "missing: ${missing[*]}"
fi

# Without the subprotocol the upgrade is refused: websocat fails and nothing is answered.
if refused=$(printf '%s\n' '{"type":"ping","id":"p2"}' |
  timeout 10 websocat --text "$ws_url" 2>&1); then
  fail "an upgrade without the gatehouse.v1 subprotocol was accepted: $refused"
fi
printf '%s\n' "$refused" | grep -q '"pong"' && fail "answered without the subprotocol: $refused"

echo "ws_websocat: ok: gate $gate; $(printf '%s\n' "$out" | wc -l) messages received"
