#!/bin/sh
# render-acl.sh TEMPLATE OUT: writes the Redis ACL file of infra/redis/users.acl.template with each
# @<NAME>_PASSWORD@ marker replaced by the SHA-256 of $REDIS_NAME_PASSWORD. Refuses an unset or empty password and
# the placeholder of infra/.env.example (CHANGE_ME...): such a Redis must not start. POSIX sh, so that
# the redis image runs it as well as infra/redis.sh.
set -eu
template="$1"
out="$2"
tmp="$out.tmp.$$"
# the ACL file takes user lines only: the template's comments and blank lines stay behind
grep -v -e '^#' -e '^[[:space:]]*$' "$template" >"$tmp"
for name in $(grep -o '@[A-Z]*_PASSWORD@' "$template" | sort -u | tr -d '@'); do
  var="REDIS_$name"
  eval "value=\${$var:-}"
  case "$value" in
    "") echo "render-acl.sh: $var is not set: every Redis user needs a password" >&2; rm -f "$tmp"; exit 1 ;;
    CHANGE_ME*) echo "render-acl.sh: $var is the placeholder of .env.example; set a random secret" >&2
      rm -f "$tmp"; exit 1 ;;
  esac
  hash="$(printf '%s' "$value" | sha256sum | cut -d' ' -f1)"
  sed "s/@$name@/$hash/g" "$tmp" >"$tmp.2" && mv "$tmp.2" "$tmp"
done
chmod 600 "$tmp"
mv "$tmp" "$out"
